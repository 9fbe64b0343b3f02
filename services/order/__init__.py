"""The order service: its REST routes (``api.router``), built into an app by
:mod:`services.registry`, and in the choreography its console at ``/ui`` (``console.router``)."""
