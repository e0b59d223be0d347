#!/usr/bin/env python3
"""An S3 API on loopback for Ballast's backup tests: moto's server with signature and policy
checking on. It makes one IAM user with the least-privilege policy docs/backups.md gives for
BUCKET/PREFIX, and that bucket, then prints one JSON line (endpoint, keys, bucket) and obeys
commands on stdin: "down" closes the listener and answers 503 on connections still open (the
store unreachable), "up" opens it again on the same port with the same data, "slow SECONDS" delays every upload request by that much.
It also answers as EC2's instance metadata service (IMDSv2) would, with temporary credentials
of a role that has the same policy, for AWS_EC2_METADATA_SERVICE_ENDPOINT; and as STS's
AssumeRoleWithWebIdentity would for a second role with that policy (web identity, as EKS's
IRSA gives a pod), given the OIDC token it prints (moto checks no token, so this does).
It exits at the end of stdin.

usage: s3server.py BUCKET PREFIX [--tls CERT KEY]
"""
import io
import json
import os
import sys
import threading
import time

# The first nine requests (the setup below, as an administrator would do it) go unchecked;
# every later one must be signed by a known key and allowed by its user's (or role's) policy.
os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = "9"

import boto3  # noqa: E402
from moto.moto_server.werkzeug_app import (  # noqa: E402
    DomainDispatcherApplication,
    create_backend_app,
)
from moto.iam import access_control  # noqa: E402
from moto.core import DEFAULT_ACCOUNT_ID  # noqa: E402
from moto.sts.models import sts_backends  # noqa: E402
from urllib.parse import parse_qs, quote, unquote  # noqa: E402
from xml.sax.saxutils import escape  # noqa: E402
from werkzeug.serving import make_server  # noqa: E402

# moto hands botocore the request's query as werkzeug rebuilt it (`prefix=a/`), and botocore
# takes it as already canonical, so any signed request with an escaped character in its query
# (every S3 client escapes the `/` of a listing's prefix) fails its check. Put it in AWS's
# canonical form first, as a real S3 does.
_create_aws_request = access_control.IAMRequestBase._create_aws_request


def _canonical(part):
    return quote(unquote(part), safe="-_.~")


def _decoded_query(self):
    path, sep, query = self._path.partition("?")
    if sep:
        pairs = (p.partition("=") for p in query.split("&"))
        self._path = path + "?" + "&".join(f"{_canonical(k)}={_canonical(v)}" for k, _, v in pairs)
    return _create_aws_request(self)


access_control.IAMRequestBase._create_aws_request = _decoded_query


# The OIDC token a pod's projected service-account token file would hold.
WEB_TOKEN = "eyJhbGciOiJSUzI1NiJ9.ballast-test-pod.signature"


def policy(bucket, prefix):
    """The policy docs/backups.md documents: list the prefix, read, write and delete in it."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": f"arn:aws:s3:::{bucket}",
                "Condition": {"StringLike": {"s3:prefix": [f"{prefix}/*"]}},
            },
            {
                "Effect": "Allow",
                "Action": [
                    "s3:GetObject",
                    "s3:PutObject",
                    "s3:DeleteObject",
                    "s3:AbortMultipartUpload",
                    "s3:ListMultipartUploadParts",
                ],
                "Resource": f"arn:aws:s3:::{bucket}/{prefix}/*",
            },
        ],
    }


def main():
    bucket, prefix = sys.argv[1], sys.argv[2].strip("/")
    tls = None
    if len(sys.argv) == 6 and sys.argv[3] == "--tls":
        tls = (sys.argv[4], sys.argv[5])
    moto_app = DomainDispatcherApplication(create_backend_app)
    state = {"delay": 0.0, "down": False}

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path.startswith("/latest/"):
            return imds(environ, start_response, path)
        if (
            environ.get("REQUEST_METHOD") == "POST"
            and path in ("", "/")
            and "HTTP_AUTHORIZATION" not in environ
        ):
            body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            form = parse_qs(body.decode("utf-8", "replace"))
            if form.get("Action") == ["AssumeRoleWithWebIdentity"]:
                return web_identity(form, start_response)
            environ["wsgi.input"] = io.BytesIO(body)
        if state["down"]:
            start_response("503 Service Unavailable", [("Content-Length", "0")])
            return [b""]
        if environ.get("REQUEST_METHOD") in ("PUT", "POST") and state["delay"]:
            time.sleep(state["delay"])
        return moto_app(environ, start_response)

    def up(port):
        srv = make_server("127.0.0.1", port, app, threaded=True, ssl_context=tls)
        t = threading.Thread(target=srv.serve_forever, daemon=True)
        t.start()
        state["srv"] = srv
        return srv.server_address[1]

    def web_identity(form, start_response):
        one = lambda k: (form.get(k) or [""])[0]  # noqa: E731
        ns = "https://sts.amazonaws.com/doc/2011-06-15/"
        if one("WebIdentityToken") != WEB_TOKEN or one("RoleArn") != state["web_role_arn"]:
            body = (
                f'<ErrorResponse xmlns="{ns}"><Error><Type>Sender</Type>'
                "<Code>InvalidIdentityToken</Code><Message>The web identity token "
                "is not valid for this role</Message></Error><RequestId>1</RequestId>"
                "</ErrorResponse>"
            ).encode()
            start_response("400 Bad Request", [("Content-Length", str(len(body)))])
            return [body]
        role = sts_backends[DEFAULT_ACCOUNT_ID]["global"].assume_role_with_web_identity(
            region_name="us-east-1",
            role_session_name=one("RoleSessionName") or "web",
            role_arn=one("RoleArn"),
            policy=None,
            duration=3600,
            external_id=None,
        )
        expiration = role.expiration.strftime("%Y-%m-%dT%H:%M:%SZ")
        body = (
            f'<AssumeRoleWithWebIdentityResponse xmlns="{ns}">'
            "<AssumeRoleWithWebIdentityResult><Credentials>"
            f"<AccessKeyId>{escape(role.access_key_id)}</AccessKeyId>"
            f"<SecretAccessKey>{escape(role.secret_access_key)}</SecretAccessKey>"
            f"<SessionToken>{escape(role.session_token)}</SessionToken>"
            f"<Expiration>{expiration}</Expiration>"
            "</Credentials></AssumeRoleWithWebIdentityResult>"
            "<ResponseMetadata><RequestId>1</RequestId></ResponseMetadata>"
            "</AssumeRoleWithWebIdentityResponse>"
        ).encode()
        start_response(
            "200 OK", [("Content-Type", "text/xml"), ("Content-Length", str(len(body)))]
        )
        return [body]

    def imds(environ, start_response, path):
        token = environ.get("HTTP_X_AWS_EC2_METADATA_TOKEN")
        if path == "/latest/api/token" and environ.get("REQUEST_METHOD") == "PUT":
            body = b"imds-session-token"
        elif token != "imds-session-token":
            start_response("401 Unauthorized", [("Content-Length", "0")])
            return [b""]
        elif path == "/latest/meta-data/iam/security-credentials/":
            body = b"ballast-backup-role"
        elif path == "/latest/meta-data/iam/security-credentials/ballast-backup-role":
            body = json.dumps(
                {
                    "Code": "Success",
                    "Type": "AWS-HMAC",
                    "AccessKeyId": state["role"]["AccessKeyId"],
                    "SecretAccessKey": state["role"]["SecretAccessKey"],
                    "Token": state["role"]["SessionToken"],
                    "Expiration": state["role"]["Expiration"].strftime("%Y-%m-%dT%H:%M:%SZ"),
                }
            ).encode()
        else:
            start_response("404 Not Found", [("Content-Length", "0")])
            return [b""]
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    port = up(0)
    scheme = "https" if tls else "http"
    endpoint = f"{scheme}://127.0.0.1:{port}"
    anon = dict(
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="setup",
        aws_secret_access_key="setup",
        verify=False,
    )
    iam = boto3.client("iam", **anon)
    iam.create_user(UserName="ballast")
    iam.put_user_policy(
        UserName="ballast",
        PolicyName="ballast-backups",
        PolicyDocument=json.dumps(policy(bucket, prefix)),
    )
    key = iam.create_access_key(UserName="ballast")["AccessKey"]
    def role(name, principal, action):
        """A role `principal` may take by `action`, with the backup user's policy."""
        trust = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": principal, "Action": action}],
        }
        r = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))["Role"]
        iam.put_role_policy(
            RoleName=name,
            PolicyName="ballast-backups",
            PolicyDocument=json.dumps(policy(bucket, prefix)),
        )
        return r

    # An instance role, and a session of it for the metadata service.
    instance_role = role("ballast-backup-role", {"Service": "ec2.amazonaws.com"}, "sts:AssumeRole")
    state["role"] = boto3.client("sts", **anon).assume_role(
        RoleArn=instance_role["Arn"], RoleSessionName="instance", DurationSeconds=3600
    )["Credentials"]
    # A role for pods with a web identity (EKS's IRSA).
    web_role = role(
        "ballast-backup-web",
        {"Federated": "arn:aws:iam::123456789012:oidc-provider/oidc.test"},
        "sts:AssumeRoleWithWebIdentity",
    )
    state["web_role_arn"] = web_role["Arn"]
    # The bucket is an administrator's to make; the backup user may not.
    boto3.client("s3", **anon).create_bucket(Bucket=bucket)
    print(
        json.dumps(
            {
                "endpoint": endpoint,
                "access_key_id": key["AccessKeyId"],
                "secret_access_key": key["SecretAccessKey"],
                "bucket": bucket,
                "prefix": prefix,
                "web_role_arn": web_role["Arn"],
                "web_identity_token": WEB_TOKEN,
            }
        ),
        flush=True,
    )
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "down" and "srv" in state:
            state["down"] = True
            srv = state.pop("srv")
            srv.shutdown()
            srv.server_close()
        elif cmd == "up" and "srv" not in state:
            state["down"] = False
            up(port)
        elif cmd.startswith("slow "):
            state["delay"] = float(cmd.split()[1])
        print("ok", flush=True)


if __name__ == "__main__":
    main()
