"""The routee namespace of the generated API code (protos/routee/)."""
