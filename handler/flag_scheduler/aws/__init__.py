"""The AWS edge: the database secret, SNS alerts, FlagChanged events and the migration function.

Nothing here imports boto3 at module level: a run that configures no AWS service never pays
for it.
"""
