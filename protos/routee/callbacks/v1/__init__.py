"""routee.callbacks.v1: code generated from protos/routee/callbacks/v1/*.proto by `make protos`; do not edit."""
