"""The operator and developer tools: the CLI, the embedded server, the demo.

Never in the Lambda zip: the template's CodeUri is handler/, which holds only flag_scheduler.
"""
