"""Parts shared by the scripts (load test, benchmark, hostile-input probe) and their tests."""
