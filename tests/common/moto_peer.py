"""The S3 peer of tests/s3.rs: moto's S3 server with IAM access control, so
SigV4 signatures are checked, plus a line-oriented command channel the tests
use to look at the server side (boto3): one JSON command per stdin line, one
JSON answer per stdout line. Exits when stdin closes (the test process ended).

First line out: {"endpoint": ..., "key": ..., "secret": ...}.
Commands: {"op": "create_bucket", "bucket", "object_lock"?} (Object Lock
enabled at creation when object_lock is true), {"op": "head", "bucket", "key",
"version"?},
{"op": "list", "bucket", "prefix"}, {"op": "assume_role"} (temporary
credentials of a role allowed everything: key, secret, token),
{"op": "download", "bucket", "prefix", "dir"} (every object to dir/<key>,
each digest's x-amz-meta-signature to dir/<key>.signature: what an auditor's
S3 client fetches), {"op": "put", "bucket", "key", "body_hex"},
{"op": "versions", "bucket", "prefix"} (every version: key, version id),
{"op": "delete_version", "bucket", "key", "version",
"bypass_governance"?} ({"deleted": true}, or {"deleted": false, "code",
"message"} when the server refuses).
"""
import json
import logging
import os
import socket
import sys

# The first three requests (IAM setup below) pass without a signature;
# every later request is checked against the access key created here.
os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = "3"
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
# One line per request would drown the test output.
logging.getLogger("werkzeug").setLevel(logging.ERROR)

import boto3  # noqa: E402
from botocore.config import Config  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


server = None
for attempt in range(10):
    # moto cannot listen on port 0: pick a free port, retry if taken meanwhile.
    port = free_port()
    try:
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            pass
        break
    except OSError:
        server = None
if server is None:
    sys.exit("moto_peer: could not start moto on a free port")

endpoint = f"http://127.0.0.1:{port}"
anon = dict(endpoint_url=endpoint, region_name="us-east-1",
            aws_access_key_id="setup", aws_secret_access_key="setup")
iam = boto3.client("iam", **anon)
iam.create_user(UserName="nozzle")
iam.put_user_policy(
    UserName="nozzle", PolicyName="all",
    PolicyDocument='{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}')
key = iam.create_access_key(UserName="nozzle")["AccessKey"]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id=key["AccessKeyId"],
                  aws_secret_access_key=key["SecretAccessKey"],
                  config=Config(s3={"addressing_style": "path"}))
print(json.dumps({"endpoint": endpoint, "key": key["AccessKeyId"],
                  "secret": key["SecretAccessKey"]}), flush=True)

for line in sys.stdin:
    cmd = json.loads(line)
    try:
        if cmd["op"] == "create_bucket":
            s3.create_bucket(Bucket=cmd["bucket"],
                             ObjectLockEnabledForBucket=bool(cmd.get("object_lock")))
            out = {"ok": True}
        elif cmd["op"] == "head":
            version = {"VersionId": cmd["version"]} if cmd.get("version") else {}
            h = s3.head_object(Bucket=cmd["bucket"], Key=cmd["key"], **version)
            out = {k: h.get(k) for k in ("ServerSideEncryption", "SSEKMSKeyId",
                                         "ContentType", "ContentEncoding", "Metadata",
                                         "ObjectLockMode", "VersionId")}
            until = h.get("ObjectLockRetainUntilDate")
            out["ObjectLockRetainUntilDate"] = until and until.isoformat()
        elif cmd["op"] == "versions":
            out = {"versions": [
                {"key": v["Key"], "version": v["VersionId"]}
                for page in s3.get_paginator("list_object_versions").paginate(
                    Bucket=cmd["bucket"], Prefix=cmd.get("prefix", ""))
                for v in page.get("Versions", [])]}
        elif cmd["op"] == "delete_version":
            try:
                # Only when asked: moto takes any value of the header,
                # "false" included, for a bypass.
                bypass = ({"BypassGovernanceRetention": True}
                          if cmd.get("bypass_governance") else {})
                s3.delete_object(Bucket=cmd["bucket"], Key=cmd["key"],
                                 VersionId=cmd["version"], **bypass)
                out = {"deleted": True}
            except s3.exceptions.ClientError as e:
                out = {"deleted": False, "code": e.response["Error"]["Code"],
                       "message": e.response["Error"].get("Message", "")}
        elif cmd["op"] == "download":
            n = 0
            for page in s3.get_paginator("list_objects_v2").paginate(
                    Bucket=cmd["bucket"], Prefix=cmd.get("prefix", "")):
                for o in page.get("Contents", []):
                    path = os.path.join(cmd["dir"], o["Key"])
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    s3.download_file(cmd["bucket"], o["Key"], path)
                    n += 1
                    if "/CFLogs-Digest/" in o["Key"] and o["Key"].endswith(".json.gz"):
                        h = s3.head_object(Bucket=cmd["bucket"], Key=o["Key"])
                        with open(path + ".signature", "w") as f:
                            f.write(h["Metadata"].get("signature", ""))
            out = {"objects": n}
        elif cmd["op"] == "put":
            s3.put_object(Bucket=cmd["bucket"], Key=cmd["key"],
                          Body=bytes.fromhex(cmd["body_hex"]))
            out = {"ok": True}
        elif cmd["op"] == "list":
            keys = []
            for page in s3.get_paginator("list_objects_v2").paginate(
                    Bucket=cmd["bucket"], Prefix=cmd.get("prefix", "")):
                keys += [o["Key"] for o in page.get("Contents", [])]
            out = {"keys": keys}
        elif cmd["op"] == "assume_role":
            signed = dict(endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id=key["AccessKeyId"],
                          aws_secret_access_key=key["SecretAccessKey"])
            iam_k = boto3.client("iam", **signed)
            try:
                arn = iam_k.get_role(RoleName="temporary")["Role"]["Arn"]
            except iam_k.exceptions.NoSuchEntityException:
                arn = iam_k.create_role(
                    RoleName="temporary",
                    AssumeRolePolicyDocument='{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"*"},"Action":"sts:AssumeRole"}]}',
                )["Role"]["Arn"]
                iam_k.put_role_policy(
                    RoleName="temporary", PolicyName="all",
                    PolicyDocument='{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}')
            c = boto3.client("sts", **signed).assume_role(
                RoleArn=arn, RoleSessionName="nozzle")["Credentials"]
            out = {"key": c["AccessKeyId"], "secret": c["SecretAccessKey"],
                   "token": c["SessionToken"]}
        else:
            out = {"error": f"unknown op {cmd['op']}"}
    except Exception as e:  # the test reports it
        out = {"error": repr(e)}
    print(json.dumps(out), flush=True)
server.stop()
