"""routee-callbacks: Routee's Viber delivery-status callbacks, stored and served over gRPC."""
