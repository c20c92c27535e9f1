"""Named scenarios, the testbed that runs them, and their results."""
