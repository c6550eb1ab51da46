"""The domain: what Routee's statuses mean and what the log holds, pure.

- ``rules``: rank and precedence, final statuses, the duplicate keys, event sources and body kinds;
- ``entries``: the entries of the log (status events, inbound messages) and the filter that selects them;
- ``errors``: the one exception tree; ``limits``: every bound on an input, named once.

It may import only the generated protos (``routee.callbacks.v1``).
"""
