"""Planning: from the config to the pending work items and why each is pending, spread over
every core."""
