"""Sending: what an answer means, when to retry, the rate limit, the deliverer, redrive."""
