-- wrk script: POST distinct Routee SMS delivery reports, three parts a message (parts 1, 2, 3 of each messageId in
-- turn), as callbacks.lua does for Viber: each thread numbers its own, the first script argument makes every
-- run's ids its own, so the service's metrics show accepted == requests, duplicates == 0.
local counter = 0
local threads = {}

function setup(thread)
  thread:set("thread_id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  run_id = args[1] or tostring(os.time())
end

local template = '{"messageId":"bench-%s-%d-%d","smsId":"bench-sms-%d","part":%d,"parts":3,' ..
  '"campaignTrackingId":"bench-campaign","label":"spring-sale","to":"+306900000001","from":"Routee",' ..
  '"country":"GR","operator":"Cosmote","groups":["vip"],"campaignName":"Spring sale","status":{"name":' ..
  '"Delivered","reason":{"detailedStatus":"Delivered","description":"Delivered to the handset"},' ..
  '"updatedDate":"2024-05-01T10:15:30.123Z"},"message":"Spring sale: 20%% off every item in store today and ' ..
  'tomorrow. Show this SMS at the till. Reply STOP to quit.","applicationName":"default","latency":1240,' ..
  '"price":0.035,"direction":"Outbound","originatingService":"Sms"}'

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

request = function()
  counter = counter + 1
  local message = math.floor((counter - 1) / 3)
  local part = (counter - 1) % 3 + 1
  return wrk.format(nil, wrk.path, nil, string.format(template, run_id, thread_id, message, counter, part))
end

done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write +
    summary.errors.status + summary.errors.timeout
  io.write(string.format('RESULT {"requests": %d, "duration_us": %d, "errors": %d, "p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, errors, latency:percentile(50), latency:percentile(99)))
end
