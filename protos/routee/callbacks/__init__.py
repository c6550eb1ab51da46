"""routee.callbacks: the generated API of routee-callbacks, by version."""
