"""The inventory service: its REST routes (``api.router``), built into an app by
:mod:`services.registry`."""
