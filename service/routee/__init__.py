"""Routee's formats: the JSON bodies it posts (status callbacks, inbound messages) read into protobuf, and the
objects of its tracking API turned into callbacks.

Used by the HTTP ingress, reconciliation and quarantine replay alike. It may import ``service.domain`` and the
protos.
"""
