#!/usr/bin/env python3
"""The hub's stack "deployed" onto an AWS API emulator that enforces IAM.

Used by the deployed-stack test (functions/tests/deployed_stack.rs), which
plays the Lambda service around the real function binaries:

1. template.yaml goes through the SAM transform (aws-sam-translator), as
   CloudFormation would run it, so SAM policy templates and event sources
   are expanded.
2. moto's server runs in this process behind an IAM middleware: a request
   signed with an access key this script got from STS AssumeRole for a
   function's role is judged against that role's policies, by the real IAM
   action and resource ARN (moto's own check is not faithful: see
   shared/FACTS.md). A denial answers with the service's AccessDenied error
   and is logged as one JSON line (function, role, action, resource).
   Requests with any other key (the test's admin key) pass.
3. The template's tables, queues (with redrive), secrets, roles and
   policies, schedule group and schedules are created in the emulator, and
   each function's role assumed.
4. A manifest (JSON) tells the test, per function, its binary, resolved
   environment, memory, timeout and credentials, plus the SQS event source
   mappings and API Gateway routes.

    deployed_stack.py --template template.yaml --manifest out.json \
        --denials denials.jsonl [--input input.json] [--drop-statement ROLE:ACTION:RESOURCE]

It prints `READY <endpoint>` when the stack is up, then serves until killed.
--input is a JSON object: {"parameters": {...}, "secrets": {"<LogicalId>":
"<SecretString>"}, "extra_secrets": {"<name>": "<SecretString>"}}.
--fail-first FUNCTION:ACTION:N answers the function's first N calls of that
IAM action with the service's 500 InternalServerError (a transient fault,
so a job is retried); a POST of {"function", "action", "count"} to
/__hub_faults changes that count while it runs.
--drop-statement ROLE:ACTION:RESOURCE removes, before anything is created,
the statement of role ROLE (logical id) that allows ACTION on resource
RESOURCE (logical id; its ARN is in the statement's Resource): the test
that shows a missing permission is caught.
"""

import argparse
import fnmatch
import http.client
import io
import json
import os
import random
import re
import socket
import string
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request

REGION = "eu-west-2"
ACCOUNT = "123456789012"
PARTITION = "aws"
STACK = "sms-hub"
ADMIN_KEY = "testing"

os.environ.setdefault("AWS_DEFAULT_REGION", REGION)
os.environ.setdefault("MOTO_ACCOUNT_ID", ACCOUNT)
# The AWS managed policies SAM attaches (AWSLambdaBasicExecutionRole, ...).
os.environ.setdefault("MOTO_IAM_LOAD_MANAGED_POLICIES", "true")


def suffix(n=12):
    return "".join(random.choice(string.ascii_uppercase + string.digits) for _ in range(n))


# ---------------------------------------------------------------- transform


def sam_transform(path, parameters):
    from samtranslator.translator.transform import transform
    from samtranslator.yaml_helper import yaml_parse

    with open(path) as f:
        sam = yaml_parse(f.read())
    # As `sam package` would: the code is in S3 by the time CloudFormation
    # transforms the template.
    for resource in sam.get("Resources", {}).values():
        if resource.get("Type") == "AWS::Serverless::Function":
            resource.setdefault("Properties", {})["CodeUri"] = "s3://deployment/code.zip"

    class ManagedPolicies:
        def load(self):
            return {
                "AWSLambdaBasicExecutionRole": "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole",
            }

    values = dict(parameters)
    values.update({
        "AWS::Region": REGION,
        "AWS::AccountId": ACCOUNT,
        "AWS::StackName": STACK,
        "AWS::Partition": PARTITION,
    })
    return transform(sam, values, ManagedPolicies())


# ---------------------------------------------------------------- intrinsics


class Stack:
    """The physical side of the template: names, ARNs and URLs by logical id."""

    def __init__(self, template, parameters):
        self.template = template
        self.resources = template.get("Resources", {})
        self.parameters = {}
        for name, spec in template.get("Parameters", {}).items():
            if name in parameters:
                value = parameters[name]
            elif "Default" in spec:
                value = spec["Default"]
            else:
                raise SystemExit(f"parameter {name} has no default and no value")
            self.parameters[name] = str(value) if not isinstance(value, list) else value
        self.refs = {}
        self.attrs = {}
        self.conditions = {}
        for name, expr in template.get("Conditions", {}).items():
            self.conditions[name] = None
        for name, expr in template.get("Conditions", {}).items():
            self.conditions[name] = bool(self.resolve(expr))

    def pseudo(self, name):
        return {
            "AWS::Region": REGION,
            "AWS::AccountId": ACCOUNT,
            "AWS::StackName": STACK,
            "AWS::Partition": PARTITION,
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::StackId": f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/{STACK}/0",
            "AWS::NoValue": None,
        }[name]

    def ref(self, name):
        if name.startswith("AWS::"):
            return self.pseudo(name)
        if name in self.parameters:
            return self.parameters[name]
        if name in self.refs:
            return self.refs[name]
        raise KeyError(f"Ref {name}: not created yet")

    def get_att(self, name, attr):
        try:
            return self.attrs[(name, attr)]
        except KeyError:
            raise KeyError(f"GetAtt {name}.{attr}: not created yet") from None

    def sub(self, text, variables):
        def one(match):
            token = match.group(1)
            if token.startswith("!"):
                return "${" + token[1:] + "}"
            if token in variables:
                return str(variables[token])
            if "." in token and not token.startswith("AWS::"):
                name, attr = token.split(".", 1)
                return str(self.get_att(name, attr))
            return str(self.ref(token))

        return re.sub(r"\$\{([^}]+)\}", one, text)

    def resolve(self, value):
        if isinstance(value, list):
            return [v for v in (self.resolve(v) for v in value) if v is not None]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            (key, arg), = value.items()
            if key == "Ref":
                return self.ref(arg)
            if key == "Fn::GetAtt":
                name, attr = arg if isinstance(arg, list) else arg.split(".", 1)
                return self.get_att(name, attr)
            if key == "Fn::Sub":
                if isinstance(arg, list):
                    text, variables = arg
                    return self.sub(text, {k: self.resolve(v) for k, v in variables.items()})
                return self.sub(arg, {})
            if key == "Fn::Join":
                sep, items = arg
                return sep.join(str(i) for i in self.resolve(items))
            if key == "Fn::Select":
                index, items = arg
                return self.resolve(items)[int(self.resolve(index))]
            if key == "Fn::Split":
                sep, text = arg
                return self.resolve(text).split(sep)
            if key == "Fn::If":
                name, yes, no = arg
                return self.resolve(yes if self.conditions[name] else no)
            if key == "Fn::Equals":
                a, b = arg
                return str(self.resolve(a)) == str(self.resolve(b))
            if key == "Fn::Not":
                return not self.resolve(arg[0])
            if key == "Fn::And":
                return all(self.resolve(a) for a in arg)
            if key == "Fn::Or":
                return any(self.resolve(a) for a in arg)
            if key == "Condition":
                return self.conditions[arg]
            if key == "Fn::ImportValue":
                raise KeyError("Fn::ImportValue is not supported")
        out = {}
        for k, v in value.items():
            r = self.resolve(v)
            if r is not None:
                out[k] = r
        return out

    def of_type(self, kind):
        return [
            (name, body)
            for name, body in self.resources.items()
            if body.get("Type") == kind and self.included(body)
        ]

    def included(self, body):
        condition = body.get("Condition")
        return condition is None or self.conditions.get(condition, True)


# ---------------------------------------------------------------- IAM decision


def wildcard(pattern, value, case_sensitive):
    """IAM wildcards: `*` any run, `?` one character."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    flags = 0 if case_sensitive else re.IGNORECASE
    return re.fullmatch(regex, value, flags) is not None


def as_list(value):
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def condition_holds(condition, context):
    """The operators the hub's policies use; anything else does not match."""
    for operator, tests in condition.items():
        if_exists = operator.endswith("IfExists")
        op = operator[: -len("IfExists")] if if_exists else operator
        for key, expected in tests.items():
            actual = context.get(key)
            if actual is None:
                if if_exists:
                    continue
                return False
            expected = as_list(expected)
            if op == "StringEquals":
                ok = actual in expected
            elif op == "StringNotEquals":
                ok = actual not in expected
            elif op == "StringLike":
                ok = any(wildcard(e, actual, True) for e in expected)
            elif op == "StringNotLike":
                ok = not any(wildcard(e, actual, True) for e in expected)
            elif op == "ArnLike" or op == "ArnEquals":
                ok = any(wildcard(e, actual, True) for e in expected)
            else:
                return False
            if not ok:
                return False
    return True


def statement_matches(statement, action, resource, context):
    if "Action" in statement:
        if not any(wildcard(a, action, False) for a in as_list(statement["Action"])):
            return False
    elif "NotAction" in statement:
        if any(wildcard(a, action, False) for a in as_list(statement["NotAction"])):
            return False
    else:
        return False
    if "Resource" in statement:
        if not any(wildcard(r, resource, True) for r in as_list(statement["Resource"])):
            return False
    elif "NotResource" in statement:
        if any(wildcard(r, resource, True) for r in as_list(statement["NotResource"])):
            return False
    if "Condition" in statement and not condition_holds(statement["Condition"], context):
        return False
    return True


def allowed(statements, action, resource, context):
    """Identity-policy evaluation: an explicit Deny wins, else an Allow is needed."""
    verdict = False
    for statement in statements:
        if statement_matches(statement, action, resource, context):
            if statement.get("Effect") == "Deny":
                return False
            verdict = True
    return verdict


# ---------------------------------------------------------------- requests to IAM actions


def arn(service, rest):
    return f"arn:{PARTITION}:{service}:{REGION}:{ACCOUNT}:{rest}"


def queue_arn_from_url(url):
    return arn("sqs", url.rstrip("/").rsplit("/", 1)[-1])


def table_arn(name, index=None):
    base = arn("dynamodb", f"table/{name}")
    return f"{base}/index/{index}" if index else base


class Secrets:
    names = {}  # name -> full ARN (with the random suffix)

    @classmethod
    def arn(cls, secret_id):
        if secret_id.startswith("arn:"):
            return secret_id
        # A name of a secret that does not exist still names a resource.
        return cls.names.get(secret_id, arn("secretsmanager", f"secret:{secret_id}"))


DYNAMO_TRANSACT = {
    "Put": "PutItem",
    "Update": "UpdateItem",
    "Delete": "DeleteItem",
    "ConditionCheck": "ConditionCheckItem",
    "Get": "GetItem",
}

SQS_BATCH = {
    "SendMessageBatch": "SendMessage",
    "DeleteMessageBatch": "DeleteMessage",
    "ChangeMessageVisibilityBatch": "ChangeMessageVisibility",
}


def dynamodb_checks(operation, body):
    if operation in ("BatchWriteItem", "BatchGetItem"):
        return [(f"dynamodb:{operation}", table_arn(t), {}) for t in body.get("RequestItems", {})]
    if operation in ("TransactWriteItems", "TransactGetItems"):
        checks = []
        for item in body.get("TransactItems", []):
            for kind, spec in item.items():
                checks.append((f"dynamodb:{DYNAMO_TRANSACT[kind]}", table_arn(spec["TableName"]), {}))
        return checks
    if operation in ("ListTables", "DescribeLimits", "DescribeEndpoints"):
        return [(f"dynamodb:{operation}", "*", {})]
    table = body.get("TableName", "")
    return [(f"dynamodb:{operation}", table_arn(table, body.get("IndexName")), {})]


def sqs_checks(operation, params):
    action = "sqs:" + SQS_BATCH.get(operation, operation)
    if operation in ("ListQueues", "GetQueueUrl"):
        name = params.get("QueueName")
        return [(action, arn("sqs", name) if name else "*", {})]
    if operation == "CreateQueue":
        return [(action, arn("sqs", params.get("QueueName", "")), {})]
    return [(action, queue_arn_from_url(params.get("QueueUrl", "")), {})]


def secretsmanager_checks(operation, body):
    if operation in ("ListSecrets", "GetRandomPassword", "BatchGetSecretValue"):
        return [(f"secretsmanager:{operation}", "*", {})]
    if operation == "CreateSecret":
        return [(f"secretsmanager:{operation}", arn("secretsmanager", f"secret:{body.get('Name', '')}-??????"), {})]
    return [(f"secretsmanager:{operation}", Secrets.arn(body.get("SecretId", "")), {})]


def scheduler_checks(method, path, query, body):
    parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/") if p]
    if parts[:1] == ["schedules"]:
        if len(parts) == 1:
            return [("scheduler:ListSchedules", "*", {})]
        name = parts[1]
        group = body.get("GroupName") or query.get("groupName", ["default"])[0]
        operation = {"POST": "CreateSchedule", "PUT": "UpdateSchedule", "DELETE": "DeleteSchedule", "GET": "GetSchedule"}[method]
        checks = [(f"scheduler:{operation}", arn("scheduler", f"schedule/{group}/{name}"), {})]
        role = (body.get("Target") or {}).get("RoleArn")
        if operation in ("CreateSchedule", "UpdateSchedule") and role:
            checks.append(("iam:PassRole", role, {"iam:PassedToService": "scheduler.amazonaws.com"}))
        return checks
    if parts[:1] == ["schedule-groups"]:
        if len(parts) == 1:
            return [("scheduler:ListScheduleGroups", "*", {})]
        operation = {"POST": "CreateScheduleGroup", "DELETE": "DeleteScheduleGroup", "GET": "GetScheduleGroup"}[method]
        return [(f"scheduler:{operation}", arn("scheduler", f"schedule-group/{parts[1]}"), {})]
    return [("scheduler:" + method + path, "*", {})]


def sms_voice_checks(operation, body):
    """End User Messaging: SendTextMessage is authorised on the origination
    identity it names (the hub gives its ARN)."""
    return [(f"sms-voice:{operation}", body.get("OriginationIdentity") or "*", {})]


def checks_for(service, environ, raw):
    """The (action, resource, context) a request needs, all of them allowed."""
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    content_type = environ.get("CONTENT_TYPE", "")
    body = {}
    params = {}
    if raw and "json" in content_type:
        try:
            body = json.loads(raw)
        except ValueError:
            body = {}
    elif raw and "x-www-form-urlencoded" in content_type:
        params = {k: v[0] for k, v in urllib.parse.parse_qs(raw.decode()).items()}
    query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
    operation = target.rsplit(".", 1)[-1] if target else params.get("Action") or (query.get("Action") or [""])[0]
    if service == "dynamodb":
        return dynamodb_checks(operation, body)
    if service == "sqs":
        merged = dict(body)
        merged.update(params)
        if "QueueUrl" not in merged and environ.get("PATH_INFO", "/") not in ("", "/"):
            merged["QueueUrl"] = environ.get("PATH_INFO")
        return sqs_checks(operation, merged)
    if service == "secretsmanager":
        return secretsmanager_checks(operation, body)
    if service == "scheduler":
        return scheduler_checks(environ["REQUEST_METHOD"], environ.get("PATH_INFO", "/"), query, body)
    if service == "sms-voice":
        return sms_voice_checks(operation, body)
    if service == "sts":
        # GetCallerIdentity needs no permission.
        if operation == "GetCallerIdentity":
            return []
        return [(f"sts:{operation}", "*", {})]
    if service in ("logs", "monitoring"):
        prefix = "cloudwatch" if service == "monitoring" else "logs"
        return [(f"{prefix}:{operation}", "*", {})]
    return [(f"{service}:{operation or environ['REQUEST_METHOD']}", "*", {})]


def denial_response(service, environ, message):
    """The service's own AccessDenied shape."""
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    content_type = environ.get("CONTENT_TYPE", "")
    if service == "scheduler":
        return "403 Forbidden", [("Content-Type", "application/json"), ("x-amzn-ErrorType", "AccessDeniedException")], json.dumps({"Message": message})
    if target or "json" in content_type:
        headers = [("Content-Type", "application/x-amz-json-1.0"), ("x-amzn-ErrorType", "AccessDeniedException")]
        if service == "sqs":
            headers.append(("x-amzn-query-error", "AccessDenied;Sender"))
        return "400 Bad Request", headers, json.dumps({"__type": "com.amazon.coral.service#AccessDeniedException", "message": message, "Message": message})
    xml = (
        '<?xml version="1.0"?><ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code>'
        f"<Message>{message}</Message></Error><RequestId>denied</RequestId></ErrorResponse>"
    )
    return "403 Forbidden", [("Content-Type", "text/xml")], xml


def forward_sms_voice(target, environ, raw, start_response):
    """An allowed End User Messaging call, re-signed with the simulated
    service's own key and sent on to it (moto has no such service)."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    url = target["endpoint"].rstrip("/") + "/"
    headers = {
        "Content-Type": environ.get("CONTENT_TYPE", ""),
        "X-Amz-Target": environ.get("HTTP_X_AMZ_TARGET", ""),
    }
    request = AWSRequest(method="POST", url=url, data=raw, headers=headers)
    credentials = Credentials(target["access_key_id"], target["secret_access_key"])
    SigV4Auth(credentials, "sms-voice", target.get("region", REGION)).add_auth(request)
    forwarded = urllib.request.Request(url, data=raw, headers=dict(request.headers), method="POST")
    try:
        with urllib.request.urlopen(forwarded, timeout=30) as response:
            status, reply, answer = response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        status, reply, answer = error.code, error.headers, error.read()
    kept = [(k, v) for k, v in reply.items() if k.lower() in ("content-type", "x-amzn-errortype", "x-amzn-requestid")]
    start_response(f"{status} {http.client.responses.get(status, '')}", kept + [("Content-Length", str(len(answer)))])
    return [answer]


class IamMiddleware:
    def __init__(self, app, denials_path, sms_voice=None):
        self.app = app
        # Where allowed End User Messaging calls go: {"endpoint",
        # "access_key_id", "secret_access_key"} of the simulated service.
        self.sms_voice = sms_voice
        self.denials_path = denials_path
        self.principals = {}  # access key -> principal
        self.faults = {}  # (function, action) -> how many more to fail
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO") == "/__hub_faults" and environ["REQUEST_METHOD"] == "POST":
            # The test's control: {"function", "action", "count"} sets how
            # many more such calls fail (0 ends an outage).
            length = int(environ.get("CONTENT_LENGTH") or 0)
            fault = json.loads(environ["wsgi.input"].read(length) or b"{}")
            with self.lock:
                self.faults[(fault["function"], fault["action"])] = int(fault["count"])
            start_response("204 No Content", [])
            return [b""]
        auth = environ.get("HTTP_AUTHORIZATION", "")
        match = re.search(r"Credential=([^/]+)/[^/]+/[^/]+/([^/]+)/", auth)
        principal = self.principals.get(match.group(1)) if match else None
        if principal is None:
            return self.app(environ, start_response)
        service = match.group(2)
        length = int(environ.get("CONTENT_LENGTH") or 0)
        raw = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(raw)
        try:
            checks = checks_for(service, environ, raw)
        except Exception as error:  # an unreadable request is denied, named
            checks = [(f"{service}:<unreadable request: {error}>", "*", {})]
        for action, resource, context in checks:
            if not allowed(principal["statements"], action, resource, context):
                record = {
                    "function": principal["function"],
                    "function_name": principal["function_name"],
                    "role": principal["role_arn"],
                    "action": action,
                    "resource": resource,
                }
                with self.lock, open(self.denials_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                message = (
                    f"User: {principal['session_arn']} is not authorized to perform: "
                    f"{action} on resource: {resource} because no identity-based policy allows the {action} action"
                )
                status, headers, text = denial_response(service, environ, message)
                data = text.encode()
                start_response(status, headers + [("Content-Length", str(len(data)))])
                return [data]
        for action, _, _ in checks:
            key = (principal["function"], action)
            with self.lock:
                inject = self.faults.get(key, 0) > 0
                if inject:
                    self.faults[key] -= 1
                with open(self.denials_path + ".allowed", "a") as f:
                    f.write(json.dumps({"function": principal["function"], "action": action, "fault": inject}) + "\n")
            if inject:
                body = json.dumps({"__type": "com.amazonaws.dynamodb.v20120810#InternalServerError", "message": "injected fault", "Message": "injected fault"}).encode()
                start_response("500 Internal Server Error", [("Content-Type", "application/x-amz-json-1.0"), ("x-amzn-ErrorType", "InternalServerError"), ("Content-Length", str(len(body)))])
                return [body]
        if service == "sms-voice" and self.sms_voice:
            return forward_sms_voice(self.sms_voice, environ, raw, start_response)
        return self.app(environ, start_response)


# ---------------------------------------------------------------- deploy


def managed_policy_statements(policy_arn):
    from moto.iam.aws_managed_policies import aws_managed_policies_data

    name = policy_arn.rsplit("/", 1)[-1]
    data = json.loads(aws_managed_policies_data)
    document = data.get(name, {}).get("Document", {})
    return as_list(document.get("Statement"))


def drops(stack, statement, drop):
    """Whether `statement` is the one --drop-statement names."""
    if statement.get("Effect") != "Allow":
        return False
    if not any(wildcard(a, drop["action"], False) for a in as_list(statement.get("Action"))):
        return False
    names = [stack.refs.get(drop["resource"])] + [
        v for (n, _), v in stack.attrs.items() if n == drop["resource"]
    ]
    return any(name and name in str(r) for name in names for r in as_list(statement.get("Resource")))


def deploy(endpoint, template, inputs, drop, middleware):
    import boto3

    session = boto3.session.Session(aws_access_key_id=ADMIN_KEY, aws_secret_access_key=ADMIN_KEY, region_name=REGION)
    client = lambda service: session.client(service, endpoint_url=endpoint)
    stack = Stack(template, inputs.get("parameters", {}))
    resources = stack.resources

    # Names that exist before anything is created.
    for name, body in stack.of_type("AWS::Lambda::Function"):
        fname = stack.resolve(body["Properties"].get("FunctionName")) or f"{STACK}-{name}-{suffix()}"
        stack.refs[name] = fname
        stack.attrs[(name, "Arn")] = arn("lambda", f"function:{fname}")
    for name, body in stack.of_type("AWS::ApiGateway::RestApi"):
        api_id = suffix(10).lower()
        stack.refs[name] = api_id
        stack.attrs[(name, "RootResourceId")] = suffix(10).lower()
    for name, body in stack.of_type("AWS::Logs::LogGroup"):
        group = stack.resolve(body["Properties"].get("LogGroupName")) or f"{STACK}-{name}"
        stack.refs[name] = group
        stack.attrs[(name, "Arn")] = arn("logs", f"log-group:{group}:*")

    scheduler = client("scheduler")
    for name, body in stack.of_type("AWS::Scheduler::ScheduleGroup"):
        group = stack.resolve(body["Properties"].get("Name")) or f"{STACK}-{name}"
        scheduler.create_schedule_group(Name=group)
        stack.refs[name] = group
        stack.attrs[(name, "Arn")] = arn("scheduler", f"schedule-group/{group}")

    dynamodb = client("dynamodb")
    for name, body in stack.of_type("AWS::DynamoDB::Table"):
        props = stack.resolve(body["Properties"])
        table = props.get("TableName") or f"{STACK}-{name}-{suffix()}"
        args = {
            "TableName": table,
            "AttributeDefinitions": props["AttributeDefinitions"],
            "KeySchema": props["KeySchema"],
            "BillingMode": props.get("BillingMode", "PAY_PER_REQUEST"),
        }
        if props.get("GlobalSecondaryIndexes"):
            args["GlobalSecondaryIndexes"] = props["GlobalSecondaryIndexes"]
        dynamodb.create_table(**args)
        if props.get("TimeToLiveSpecification", {}).get("Enabled"):
            dynamodb.update_time_to_live(TableName=table, TimeToLiveSpecification=props["TimeToLiveSpecification"])
        stack.refs[name] = table
        stack.attrs[(name, "Arn")] = table_arn(table)

    sqs = client("sqs")
    queues = {}
    for name, body in stack.of_type("AWS::SQS::Queue"):
        props = body.get("Properties", {})
        queue = stack.resolve(props.get("QueueName")) or f"{STACK}-{name}-{suffix()}"
        attributes = {}
        for key in ("VisibilityTimeout", "MessageRetentionPeriod", "DelaySeconds", "ReceiveMessageWaitTimeSeconds", "MaximumMessageSize"):
            if key in props:
                attributes[key] = str(stack.resolve(props[key]))
        url = sqs.create_queue(QueueName=queue, Attributes=attributes)["QueueUrl"]
        stack.refs[name] = url
        stack.attrs[(name, "Arn")] = arn("sqs", queue)
        stack.attrs[(name, "QueueName")] = queue
        stack.attrs[(name, "QueueUrl")] = url
        queues[name] = {"url": url, "arn": arn("sqs", queue), "name": queue, "visibility_timeout": int(attributes.get("VisibilityTimeout", 30))}
    for name, body in stack.of_type("AWS::SQS::Queue"):
        redrive = body.get("Properties", {}).get("RedrivePolicy")
        if redrive:
            redrive = stack.resolve(redrive)
            sqs.set_queue_attributes(QueueUrl=queues[name]["url"], Attributes={"RedrivePolicy": json.dumps(redrive)})
            queues[name]["redrive"] = redrive

    secretsmanager = client("secretsmanager")
    secrets = {}
    supplied = inputs.get("secrets", {})
    for name, body in stack.of_type("AWS::SecretsManager::Secret"):
        props = stack.resolve(body["Properties"])
        secret_name = props.get("Name") or f"{name}-{suffix()}"
        if name in supplied:
            value = supplied[name]
        elif "SecretString" in props:
            value = props["SecretString"]
        else:
            generate = props.get("GenerateSecretString", {})
            generated = suffix(generate.get("PasswordLength", 32))
            if "SecretStringTemplate" in generate:
                document = json.loads(generate["SecretStringTemplate"])
                document[generate["GenerateStringKey"]] = generated
                value = json.dumps(document)
            else:
                value = generated
        created = secretsmanager.create_secret(Name=secret_name, SecretString=value)
        Secrets.names[secret_name] = created["ARN"]
        stack.refs[name] = created["ARN"]
        stack.attrs[(name, "Id")] = created["ARN"]
        secrets[name] = {"name": secret_name, "arn": created["ARN"]}
    for secret_name, value in inputs.get("extra_secrets", {}).items():
        created = secretsmanager.create_secret(Name=secret_name, SecretString=value)
        Secrets.names[secret_name] = created["ARN"]

    # Roles: names first (policies refer to each other's ARNs), then policies.
    iam = client("iam")
    roles = {}
    for name, body in stack.of_type("AWS::IAM::Role"):
        role = stack.resolve(body["Properties"].get("RoleName")) or f"{STACK}-{name}-{suffix()}"
        stack.refs[name] = role
        stack.attrs[(name, "Arn")] = f"arn:{PARTITION}:iam::{ACCOUNT}:role/{role}"
    dropped = None
    for name, body in stack.of_type("AWS::IAM::Role"):
        props = body["Properties"]
        role = stack.refs[name]
        created = iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps(stack.resolve(props["AssumeRolePolicyDocument"])))
        statements = []
        for policy in props.get("Policies", []):
            if "Fn::If" in policy:
                # A policy under a condition (SAM keeps the template's Fn::If):
                # the chosen branch, or nothing for AWS::NoValue.
                condition, granted, otherwise = policy["Fn::If"]
                policy = granted if stack.conditions[condition] else otherwise
                if policy == {"Ref": "AWS::NoValue"}:
                    continue
            policy_name = stack.resolve(policy["PolicyName"])
            document = stack.resolve(policy["PolicyDocument"])
            document["Statement"] = as_list(document.get("Statement"))
            if drop and drop["role"] == name:
                for index, statement in enumerate(document["Statement"]):
                    if drops(stack, statement, drop):
                        dropped = document["Statement"].pop(index)
                        break
            if document["Statement"]:
                # AWS takes a document without Version (as SAM's policy
                # templates write them); moto insists on one.
                stored = dict(document, Version=document.get("Version", "2012-10-17"))
                iam.put_role_policy(RoleName=role, PolicyName=policy_name, PolicyDocument=json.dumps(stored))
            statements.extend(document["Statement"])
        for managed in stack.resolve(props.get("ManagedPolicyArns", [])):
            iam.attach_role_policy(RoleName=role, PolicyArn=managed)
            statements.extend(managed_policy_statements(managed))
        roles[name] = {"name": role, "arn": created["Role"]["Arn"], "statements": statements}

    for name, body in stack.of_type("AWS::Scheduler::Schedule"):
        props = stack.resolve(body["Properties"])
        args = {k: props[k] for k in ("Name", "ScheduleExpression", "FlexibleTimeWindow", "Target", "State", "Description", "ScheduleExpressionTimezone", "GroupName") if k in props}
        scheduler.create_schedule(**args)
        stack.refs[name] = props["Name"]

    sts = client("sts")
    functions = {}
    by_arn = {}
    for name, body in stack.of_type("AWS::Lambda::Function"):
        props = body["Properties"]
        role_arn = stack.resolve(props["Role"])
        role_logical = next(r for r, v in roles.items() if v["arn"] == role_arn)
        credentials = sts.assume_role(RoleArn=role_arn, RoleSessionName=stack.refs[name])
        keys = credentials["Credentials"]
        middleware.principals[keys["AccessKeyId"]] = {
            "function": name,
            "function_name": stack.refs[name],
            "role_arn": role_arn,
            "session_arn": credentials["AssumedRoleUser"]["Arn"],
            "statements": roles[role_logical]["statements"],
        }
        environment = stack.resolve(props.get("Environment", {}).get("Variables", {}))
        functions[name] = {
            "name": stack.refs[name],
            "arn": stack.attrs[(name, "Arn")],
            "binary": body.get("Metadata", {}).get("BuildProperties", {}).get("Binary"),
            "memory": int(stack.resolve(props.get("MemorySize", 128))),
            "timeout": int(stack.resolve(props.get("Timeout", 3))),
            "environment": {k: str(v) for k, v in environment.items()},
            "role": role_logical,
            "role_arn": role_arn,
            "credentials": {
                "access_key_id": keys["AccessKeyId"],
                "secret_access_key": keys["SecretAccessKey"],
                "session_token": keys["SessionToken"],
            },
            "reserved_concurrency": (
                int(stack.resolve(props["ReservedConcurrentExecutions"]))
                if "ReservedConcurrentExecutions" in props
                else None
            ),
        }
        by_arn[stack.attrs[(name, "Arn")]] = name
        by_arn[stack.refs[name]] = name

    mappings = []
    for name, body in stack.of_type("AWS::Lambda::EventSourceMapping"):
        props = stack.resolve(body["Properties"])
        function = by_arn[props["FunctionName"]]
        queue = next(q for q, v in queues.items() if v["arn"] == props["EventSourceArn"])
        mappings.append({
            "function": function,
            "queue": queue,
            "queue_url": queues[queue]["url"],
            "queue_arn": queues[queue]["arn"],
            "batch_size": int(props.get("BatchSize", 10)),
            "maximum_concurrency": int((props.get("ScalingConfig") or {}).get("MaximumConcurrency", 1000)),
            "report_batch_item_failures": "ReportBatchItemFailures" in props.get("FunctionResponseTypes", []),
            "enabled": props.get("Enabled", True) not in (False, "false"),
        })

    routes = []
    stage = None
    for name, body in stack.of_type("AWS::ApiGateway::RestApi"):
        swagger = body["Properties"].get("Body", {})
        for path, methods in swagger.get("paths", {}).items():
            for method, operation in methods.items():
                uri = stack.resolve(operation["x-amazon-apigateway-integration"]["uri"])
                function_arn = re.search(r"functions/(.+)/invocations", uri).group(1)
                security = [list(s)[0] for s in operation.get("security", [])]
                routes.append({
                    "path": path,
                    "method": "ANY" if method == "x-amazon-apigateway-any-method" else method.upper(),
                    "function": by_arn[function_arn],
                    "auth": "AWS_IAM" if "AWS_IAM" in security else "NONE",
                })
    for name, body in stack.of_type("AWS::ApiGateway::Stage"):
        stage = stack.resolve(body["Properties"].get("StageName"))

    return {
        "endpoint": endpoint,
        "region": REGION,
        "account": ACCOUNT,
        "admin_key": ADMIN_KEY,
        "functions": functions,
        "event_source_mappings": mappings,
        "queues": queues,
        "secrets": secrets,
        "routes": routes,
        "stage": stage,
        "roles": {k: {"name": v["name"], "arn": v["arn"]} for k, v in roles.items()},
        "dropped_statement": dropped,
    }


def self_test():
    """The IAM decision and the request-to-action mapping on known cases."""
    table = table_arn("hub")
    allow_crud = {"Effect": "Allow", "Action": ["dynamodb:GetItem", "dynamodb:Put*"], "Resource": [table, table + "/index/*"]}
    cases = [
        ([allow_crud], "dynamodb:GetItem", table, {}, True),
        ([allow_crud], "DynamoDB:putitem", table, {}, True),  # actions ignore case
        ([allow_crud], "dynamodb:Query", table, {}, False),
        ([allow_crud], "dynamodb:GetItem", table_arn("hub", "gsi1"), {}, True),
        ([allow_crud], "dynamodb:GetItem", table_arn("hub2"), {}, False),
        ([allow_crud], "dynamodb:GetItem", table.upper(), {}, False),  # resources do not
        ([allow_crud, {"Effect": "Deny", "Action": "dynamodb:*", "Resource": "*"}], "dynamodb:GetItem", table, {}, False),
        ([{"Effect": "Allow", "NotAction": "dynamodb:Scan", "Resource": "*"}], "dynamodb:Scan", table, {}, False),
        ([{"Effect": "Allow", "NotAction": "dynamodb:Scan", "Resource": "*"}], "sqs:SendMessage", "x", {}, True),
        ([{"Effect": "Allow", "Action": "*", "NotResource": table}], "dynamodb:GetItem", table, {}, False),
        ([{"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": arn("secretsmanager", "secret:sms-hub/gp/*")}],
         "secretsmanager:GetSecretValue", arn("secretsmanager", "secret:sms-hub/gp/A81001-AbCdEf"), {}, True),
        ([{"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": arn("secretsmanager", "secret:sms-hub/notify-??????")}],
         "secretsmanager:GetSecretValue", arn("secretsmanager", "secret:sms-hub/notify-AbCdEf"), {}, True),
        ([{"Effect": "Allow", "Action": "iam:PassRole", "Resource": "*", "Condition": {"StringEquals": {"iam:PassedToService": "scheduler.amazonaws.com"}}}],
         "iam:PassRole", "r", {"iam:PassedToService": "scheduler.amazonaws.com"}, True),
        ([{"Effect": "Allow", "Action": "iam:PassRole", "Resource": "*", "Condition": {"StringEquals": {"iam:PassedToService": "scheduler.amazonaws.com"}}}],
         "iam:PassRole", "r", {"iam:PassedToService": "lambda.amazonaws.com"}, False),
        ([], "sqs:SendMessage", "x", {}, False),
    ]
    for statements, action, resource, context, expected in cases:
        got = allowed(statements, action, resource, context)
        assert got == expected, (statements, action, resource, context, got)
    transact = {"TransactItems": [
        {"Put": {"TableName": "a"}}, {"Update": {"TableName": "b"}},
        {"ConditionCheck": {"TableName": "a"}}, {"Delete": {"TableName": "c"}},
    ]}
    assert dynamodb_checks("TransactWriteItems", transact) == [
        ("dynamodb:PutItem", table_arn("a"), {}), ("dynamodb:UpdateItem", table_arn("b"), {}),
        ("dynamodb:ConditionCheckItem", table_arn("a"), {}), ("dynamodb:DeleteItem", table_arn("c"), {}),
    ]
    assert dynamodb_checks("Query", {"TableName": "t", "IndexName": "gsi1"}) == [("dynamodb:Query", table_arn("t", "gsi1"), {})]
    url = "http://127.0.0.1:1/123456789012/sms-hub-SendQueue-X"
    assert sqs_checks("SendMessageBatch", {"QueueUrl": url}) == [("sqs:SendMessage", arn("sqs", "sms-hub-SendQueue-X"), {})]
    assert sqs_checks("ChangeMessageVisibilityBatch", {"QueueUrl": url})[0][0] == "sqs:ChangeMessageVisibility"
    Secrets.names["sms-hub/notify"] = arn("secretsmanager", "secret:sms-hub/notify-AbCdEf")
    assert secretsmanager_checks("GetSecretValue", {"SecretId": "sms-hub/notify"}) == [
        ("secretsmanager:GetSecretValue", arn("secretsmanager", "secret:sms-hub/notify-AbCdEf"), {})]
    create = scheduler_checks("POST", "/schedules/deadline-1", {}, {"GroupName": "g", "Target": {"RoleArn": "arn:aws:iam::1:role/s"}})
    assert create == [
        ("scheduler:CreateSchedule", arn("scheduler", "schedule/g/deadline-1"), {}),
        ("iam:PassRole", "arn:aws:iam::1:role/s", {"iam:PassedToService": "scheduler.amazonaws.com"}),
    ], create
    sender = arn("sms-voice", "sender-id/NHSALERT/GB")
    assert sms_voice_checks("SendTextMessage", {"OriginationIdentity": sender}) == [
        ("sms-voice:SendTextMessage", sender, {})]
    assert allowed([{"Effect": "Allow", "Action": "sms-voice:SendTextMessage", "Resource": sender}],
                   "sms-voice:SendTextMessage", sender, {})
    assert not allowed([{"Effect": "Allow", "Action": "sms-voice:SendTextMessage", "Resource": sender}],
                       "sms-voice:SendTextMessage", arn("sms-voice", "sender-id/OTHER/GB"), {})
    assert scheduler_checks("DELETE", "/schedules/d", {"groupName": ["g"]}, {}) == [
        ("scheduler:DeleteSchedule", arn("scheduler", "schedule/g/d"), {})]
    print(f"ok: {len(cases)} decisions and the request mappings")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--template")
    parser.add_argument("--manifest")
    parser.add_argument("--denials")
    parser.add_argument("--self-test", action="store_true", help="check the IAM decision on known cases and exit")
    parser.add_argument("--input")
    parser.add_argument("--drop-statement", help="ROLE:ACTION:RESOURCE (logical ids)")
    parser.add_argument("--fail-first", help="FUNCTION:ACTION:N: the function's first N such calls get a 500 (a transient fault)")
    parser.add_argument("--transform-only", action="store_true", help="print the transformed template and exit")
    args = parser.parse_args()
    if args.self_test:
        self_test()
        return
    if not (args.template and args.manifest and args.denials):
        parser.error("--template, --manifest and --denials are required")

    inputs = {}
    if args.input:
        with open(args.input) as f:
            inputs = json.load(f)
    template = sam_transform(args.template, inputs.get("parameters", {}))
    if args.transform_only:
        json.dump(template, sys.stdout, indent=1)
        return
    drop = None
    if args.drop_statement:
        role, rest = args.drop_statement.split(":", 1)
        action, resource = rest.rsplit(":", 1)
        drop = {"role": role, "action": action, "resource": resource}

    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    open(args.denials, "w").close()
    app = DomainDispatcherApplication(create_backend_app)
    middleware = IamMiddleware(app, args.denials, inputs.get("sms_voice"))
    if args.fail_first:
        function, rest = args.fail_first.split(":", 1)
        action, count = rest.rsplit(":", 1)
        middleware.faults[(function, action)] = int(count)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = make_server("127.0.0.1", port, middleware, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{port}"
    manifest = deploy(endpoint, template, inputs, drop, middleware)
    if drop and manifest["dropped_statement"] is None:
        raise SystemExit(f"--drop-statement {args.drop_statement}: no such statement")
    tmp = args.manifest + ".tmp"
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(tmp, args.manifest)
    print(f"READY {endpoint}", flush=True)
    thread.join()


if __name__ == "__main__":
    main()
