"""A fault kit for tests: a TCP proxy that delays, black-holes or resets connections
(:mod:`faults.proxy`), and private MariaDB, Redis and RabbitMQ servers that a test may kill and
restart without touching the machine's shared ones (:mod:`faults.servers`)."""
