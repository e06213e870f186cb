"""The fault-injection suite (issue 28): kills, full or read-only disks, corrupt entries, out of
memory, closing during jobs, a model changed mid-propagation. Each test checks: no crash, no hang,
a message that says what happened and what to do, committed labels intact, no valid cache entry
deleted."""
