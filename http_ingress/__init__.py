"""HTTP ingress of routee-callbacks: the Falcon app that receives Routee's callbacks."""
