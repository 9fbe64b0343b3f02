"""The shipping service: its REST routes (``api.router``), built into an app by
:mod:`services.registry`."""
