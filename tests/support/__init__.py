"""What the tests share, a module a concern: fixtures, network and HTTP, DNS, certificates, the real service
process, streams, the load balancer, PostgreSQL, a fake Routee, the embedded app, and the one polling helper."""
