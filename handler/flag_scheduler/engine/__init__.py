"""The decision core and the run loop: what to apply, retry or give up on, and when."""
