"""Reconciliation with Routee's tracking API: the client (``tracking_api``) and the loop that looks up messages
whose status is late (``reconciler``).

It may import ``service.log`` and everything below it.
"""
