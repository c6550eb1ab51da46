-- wrk script: POST distinct Routee Viber callbacks. Every request carries a new trackingId: each wrk thread
-- numbers its own (thread id in the id), and the first script argument makes every run's ids its own
-- (`wrk ... -s callbacks.lua URL -- RUN_ID`), so no run repeats another's. The service's metrics then show
-- accepted == requests, duplicates == 0 (bench checks this every round).
local counter = 0
local threads = {}

function setup(thread)
  thread:set("thread_id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  run_id = args[1] or tostring(os.time())
end

local template = '{"trackingId":"bench-%s-%d-%d","campaignTrackingId":"bench-campaign","to":"+306900000001",' ..
  '"from":"Routee","groups":["vip"],"country":"GR","status":{"name":"Delivered","reason":{"detailedStatus":' ..
  '"Delivered","description":"The message was delivered"},"updatedDate":"2024-05-01T10:15:30.123Z"},' ..
  '"body":{"text":"Spring sale: 20%% off today","imageURL":"https://example.com/img/spring.png"},' ..
  '"ttl":3600,"label":"spring-sale","inboundUrl":"https://example.com/inbound","applicationName":"default",' ..
  '"price":0.0123,"direction":"Outbound","originatingService":"Viber","createdAt":"2024-05-01T10:15:00.000Z"}'

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

request = function()
  counter = counter + 1
  return wrk.format(nil, wrk.path, nil, string.format(template, run_id, thread_id, counter))
end

done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write +
    summary.errors.status + summary.errors.timeout
  io.write(string.format('RESULT {"requests": %d, "duration_us": %d, "errors": %d, "p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, errors, latency:percentile(50), latency:percentile(99)))
end
