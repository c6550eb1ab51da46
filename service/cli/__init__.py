"""The command line: ``routee-callbacks serve`` and the operator's commands (``status``, ``watch``, ``quarantine``,
``reconcile``, ``simulate``).

It sits on top: it may import everything.
"""
