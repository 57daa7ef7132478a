"""The engines: each turns a prepared problem into a report, and never prints."""
