#!/usr/bin/env python3
"""Checks sparq's deployment files without Docker, Kubernetes or Slurm; exit 0 when all pass.

- docker-compose.yml against the compose JSON schema, then what the schema cannot see: services
  named in depends_on, files in the repo, tokens, TLS (an https:// coordinator, its certificate
  and the clients' CA in mounted volumes), S3 credentials against the SeaweedFS identity file,
  the job spec the submit service sends (under an --allow-root s3://...), the Dockerfile;
- jobs/*.toml: kind and repo paths (keys and types: tests/serve.rs, with the service's parser);
- jobs/serve-k8s.yaml: object shape, Secrets, Service selector, GPU requests, HTTPS, probes, PVC,
  the Kubernetes schemas (strict) when kubernetes-validate is installed;
- jobs/encode-indexed-job.yaml: an Indexed Job of `sparq encode --task-index auto` with
  --task-count = completions, per-index retries, its job file from a ConfigMap (shard_rows
  fixed), and a finalize Job over the same file and count; jobs/*.yaml against the schemas;
- jobs/*.sbatch, jobs/*.sh, scripts/*.sh: `bash -n`, #SBATCH placement, no GPU request in
  #SBATCH lines, shellcheck when installed.

The compose schema is compose/config/compose_spec.json from the PyPI wheel docker-compose==1.29.2,
read out of the wheel with zipfile (nothing is installed). Fetch it once into .cache/:
    .venv/bin/pip install jsonschema pyyaml
    .venv/bin/pip download --no-deps docker-compose==1.29.2 -d .cache/compose-schema
    .venv/bin/python scripts/check-deploy.py            # or: --fetch-schema does the download
or name the wheel or the extracted JSON: --compose-schema PATH, or SPARQ_COMPOSE_SCHEMA=PATH.
"""

import argparse
import glob
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path, PurePosixPath

try:
    import jsonschema
    import yaml
except ImportError as e:
    sys.exit(f"check-deploy: {e.name} is missing: .venv/bin/pip install jsonschema pyyaml")

SCHEMA_WHEEL = "docker-compose==1.29.2"
SCHEMA_MEMBER = "compose/config/compose_spec.json"
SPARQ_COMMANDS = {"serve", "submit", "status", "cancel", "worker"}
problems = []


def fail(file, key, msg):
    problems.append(f"{file}: {key}: {msg}" if key else f"{file}: {msg}")


def argv(command):
    if command is None:
        return []
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def flag(args, name, default=None):
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return default


def port_of(listen):
    return int(str(listen).rsplit(":", 1)[1])


# ---------------------------------------------------------------- job specs

def check_job_spec(path, label, root):
    """A job spec of the service; returns the parsed TOML ({} when unreadable)."""
    try:
        spec = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        fail(label, None, f"not a readable TOML job spec: {e}")
        return {}
    # Keys and types are checked by the service's own parser (tests/serve.rs runs every
    # jobs/*.toml through it); here: the kind, and that local paths exist in the repo.
    kind = spec.get("kind")
    if kind not in ("encode", "train"):
        fail(label, "kind", f'{kind!r}: a job spec needs kind = "encode" or "train"')
    for k in ("model", "input", "train_data"):
        v = spec.get(k)
        if isinstance(v, str) and not v.startswith("s3://") and not glob.glob(str(root / v)):
            fail(label, k, f"{v}: no such path in the repo")
    return spec


# ---------------------------------------------------------------- compose schema

def find_schema(root, given, fetch):
    cache = root / ".cache" / "compose-schema"
    candidates = [Path(given)] if given else (
        sorted(cache.glob("*.json")) + sorted(cache.glob("docker_compose-1.29.2-*.whl")))
    if not candidates and fetch:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        SCHEMA_WHEEL, "-d", str(cache)], check=True)
        candidates = sorted(cache.glob("docker_compose-1.29.2-*.whl"))
    if not candidates:
        sys.exit(f"check-deploy: no compose schema in {cache}: run with --fetch-schema, or\n"
                 f"  pip download --no-deps {SCHEMA_WHEEL} -d {cache}")
    path = candidates[0]
    try:
        if path.suffix == ".whl":
            with zipfile.ZipFile(path) as z:
                return json.loads(z.read(SCHEMA_MEMBER)), f"{path.name}!{SCHEMA_MEMBER}"
        return json.loads(path.read_text()), str(path)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        sys.exit(f"check-deploy: {path}: not the compose schema or its wheel: {e}")


def format_checker():
    """The formats compose's own validator checks (jsonschema skips unknown ones)."""
    fc = jsonschema.FormatChecker()
    duration = re.compile(r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$")
    p = r"\d+(-\d+)?"
    ports = re.compile(rf"^((\[?[0-9a-fA-F.:]+\]?:)?({p})?:)?{p}(/(tcp|udp|sctp))?$")
    fc.checks("duration")(lambda v: not isinstance(v, str) or bool(duration.match(v)))
    fc.checks("ports")(lambda v: not isinstance(v, str) or bool(ports.match(v)))
    fc.checks("expose")(lambda v: not isinstance(v, str) or bool(ports.match(v)))
    return fc


def interpolate(value, file, key=""):
    """Compose's ${VAR:-default} substitution with every variable unset (defaults apply)."""
    if isinstance(value, dict):
        return {k: interpolate(v, file, f"{key}.{k}".lstrip(".")) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, file, f"{key}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def sub(m):
        if m.group(0) == "$$":
            return "$"
        body = m.group(1) if m.group(1) is not None else m.group(2)
        parts = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)(:?[-?+])?(.*)$", body, re.S)
        if not parts:
            fail(file, key, f"invalid interpolation ${{{body}}}")
            return ""
        op = parts.group(2) or ""
        if op.endswith("?"):
            fail(file, key, f"${{{body}}} requires {parts.group(1)} to be set")
        return parts.group(3) if op.endswith("-") else ""
    return re.sub(r"\$\$|\$\{([^}]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", sub, value)


# ---------------------------------------------------------------- Dockerfile

def dockerfile_final_stage(path):
    """The last stage's instructions as (INSTRUCTION, args), continuation lines joined."""
    stages = [[]]
    for line in re.sub(r"\\\n", " ", path.read_text()).splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            if op.upper() == "FROM":
                stages.append([])
            stages[-1].append((op.upper(), rest.strip()))
    return stages[-1]


def copies(stage):
    """(sources, destination) of the stage's COPY lines from the build context."""
    for op, rest in stage:
        if op == "COPY" and "--from" not in rest:
            args = [a for a in shlex.split(rest) if not a.startswith("--")]
            yield args[:-1], args[-1]


def image_path_to_repo(stage, image_path):
    """The repo path a file in the image comes from, via WORKDIR and COPY."""
    workdir = PurePosixPath("/")
    for op, rest in stage:
        if op == "WORKDIR":
            workdir = workdir / rest
    target = workdir / image_path
    for sources, dest in copies(stage):
        dest = workdir / dest
        if len(sources) == 1 and (target == dest or dest in target.parents):
            return Path(sources[0]) / target.relative_to(dest)
    return None


def check_dockerfile(root, path, stage, ctx):
    label = str(path.relative_to(root))
    ignore = ctx / ".dockerignore"
    ignored = [ln.strip().rstrip("/") for ln in (ignore.read_text().splitlines()
               if ignore.is_file() else []) if ln.strip() and not ln.startswith("#")]
    for sources, _ in copies(stage):
        for src in sources:
            if not (ctx / src).exists():
                fail(label, f"COPY {src}", "no such path in the build context")
            if any(PurePosixPath(src).match(p) for p in ignored):
                fail(label, f"COPY {src}", "excluded by .dockerignore")
    entry = [r for op, r in stage if op == "ENTRYPOINT"]
    if not entry or "sparq" not in entry[-1]:
        fail(label, "ENTRYPOINT", "the runtime stage should run sparq: compose commands omit it")


# ---------------------------------------------------------------- docker-compose.yml

class Compose:
    file = "docker-compose.yml"

    def __init__(self, root, doc):
        self.root, self.services = root, doc.get("services") or {}
        self.cmd = {n: argv(s.get("command")) for n, s in self.services.items()}
        # A service of the sparq image with its own entrypoint (make-secrets) runs no sparq.
        self.sparq = [n for n, s in self.services.items() if ("build" in s
                      or str(s.get("image", "")).split(":")[0].endswith("sparq"))
                      and "entrypoint" not in s]
        self.stage = []  # the runtime stage of the Dockerfile the sparq services build

    def env(self, name):
        env = self.services[name].get("environment") or {}
        if isinstance(env, list):
            return dict(e.split("=", 1) if "=" in e else (e, None) for e in env)
        return {k: str(v).lower() if isinstance(v, bool) else v for k, v in env.items()}

    def waits_for(self, name, dep, condition):
        deps = self.services[name].get("depends_on") or {}
        if not isinstance(deps, dict) or (deps.get(dep) or {}).get("condition") != condition:
            fail(self.file, f"services.{name}.depends_on.{dep}", f"should be {condition}")

    def volumes(self, name):
        """(host source or volume name, container target, is a bind mount) per volume."""
        for v in self.services[name].get("volumes") or []:
            if isinstance(v, str):
                src, dst = (v.split(":") + [""])[:2]
                yield src, dst, src[:1] in "./~"
            else:
                yield v.get("source", ""), v.get("target", ""), v.get("type") == "bind"

    def check(self):
        f = self.file
        for name, svc in self.services.items():
            for dep in svc.get("depends_on") or []:
                if dep not in self.services:
                    fail(f, f"services.{name}.depends_on.{dep}", "no such service")
            for src, _, bind in self.volumes(name):
                if bind and not (self.root / src).exists():
                    fail(f, f"services.{name}.volumes", f"{src}: no such file in the repo")
        for name in self.sparq:
            env = self.env(name)
            if not (env.get("SPARQ_TOKEN") or env.get("SPARQ_TOKEN_FILE")):
                fail(f, f"services.{name}.environment.SPARQ_TOKEN", "missing or empty, and no "
                     "SPARQ_TOKEN_FILE")
            for var in ("SPARQ_TOKEN_FILE", "SPARQ_CA_CERT"):
                if env.get(var) and not self.mounted(name, env[var]):
                    fail(f, f"services.{name}.environment.{var}", f"{env[var]} is not in a "
                         "volume the service mounts")
            if self.cmd[name][:1] and self.cmd[name][0] not in SPARQ_COMMANDS | {"inspect"}:
                fail(f, f"services.{name}.command", f"{self.cmd[name][0]!r}: not a sparq command")
            build = self.services[name].get("build")
            if build is not None:
                build = {"context": build} if isinstance(build, str) else build
                ctx = self.root / build.get("context", ".")
                dockerfile = ctx / build.get("dockerfile", "Dockerfile")
                if not dockerfile.is_file():
                    fail(f, f"services.{name}.build", f"{dockerfile}: no such file")
                else:
                    self.stage = dockerfile_final_stage(dockerfile)
                    check_dockerfile(self.root, dockerfile, self.stage, ctx)
        serve = [n for n in self.sparq if self.cmd[n][:1] == ["serve"]]
        if len(serve) != 1:
            return fail(f, "services", f"want one service running `sparq serve`, found {serve}")
        self.check_coordinator(serve[0])
        bucket, upload = self.check_s3()
        for name in self.sparq:
            if self.cmd[name][:1] == ["submit"]:
                self.check_submit(name, bucket, upload)

    def mounted(self, name, path):
        """Whether `path` lies in a volume that service `name` mounts."""
        return any(dst and PurePosixPath(dst) in PurePosixPath(path).parents
                   for _, dst, _ in self.volumes(name))

    def check_coordinator(self, coord):
        f, svc, args = self.file, self.services[coord], self.cmd[coord]
        port = port_of(flag(args, "--listen", "127.0.0.1:7070"))
        # Clients refuse plain http to anything but loopback: the coordinator serves HTTPS.
        tls = [flag(args, "--tls-cert"), flag(args, "--tls-key")]
        if None in tls:
            fail(f, f"services.{coord}.command", "--tls-cert and --tls-key are needed: workers "
                 "refuse http:// to another container")
        for path in filter(None, tls):
            if not self.mounted(coord, path):
                fail(f, f"services.{coord}.command", f"{path} is not in a volume it mounts")
        test = argv((svc.get("healthcheck") or {}).get("test"))
        if f":{port}/healthz" not in " ".join(test):
            fail(f, f"services.{coord}.healthcheck", f"missing, or not a query of :{port}/healthz")
        if "curl" in test and not any(op == "RUN" and re.search(r"install\b.*\bcurl\b", r)
                                      for op, r in self.stage):
            fail("Dockerfile", "RUN", f"{f} services.{coord}.healthcheck runs curl, which the "
                 "runtime stage does not install")
        state = str(PurePosixPath(flag(args, "--state", "sparq.db")).parent)
        if not any(dst == state for _, dst, _ in self.volumes(coord)):
            fail(f, f"services.{coord}.volumes", f"no volume holds the state folder {state}")
        for p in svc.get("ports") or []:
            if not str(p).startswith("127.0.0.1:"):
                fail(f, f"services.{coord}.ports", f"{p}: publish on 127.0.0.1 only")
            if not str(p).endswith(f":{port}"):
                fail(f, f"services.{coord}.ports", f"{p}: the --listen port is {port}")
        want = f"https://{coord}:{port}"
        for name in self.sparq:
            if self.cmd[name][:1] in (["worker"], ["submit"]):
                url = flag(self.cmd[name], "--coordinator") or self.env(name).get(
                    "SPARQ_COORDINATOR")
                if str(url).rstrip("/") != want:
                    fail(f, f"services.{name}", f"coordinator URL {url!r} is not {want}")
                self.waits_for(name, coord, "service_healthy")

    def check_s3(self):
        """SeaweedFS, its identity file and everyone's credentials; the bucket s3-init makes."""
        f = self.file
        s3 = [n for n, s in self.services.items() if "seaweedfs" in str(s.get("image", ""))]
        if len(s3) != 1:
            fail(f, "services", f"want one SeaweedFS service, found {s3}")
            return None, None
        s3, cfg = s3[0], flag(self.cmd[s3[0]], "-s3.config")
        want = f"http://{s3}:{flag(self.cmd[s3], '-s3.port', '8333')}"
        host = next((src for src, dst, bind in self.volumes(s3) if bind and dst == cfg), None)
        if host is None:
            fail(f, f"services.{s3}.command", "-s3.config is not a file mounted from the repo")
            return None, None
        try:
            identities = json.loads((self.root / host).read_text())["identities"]
            creds = {(c["accessKey"], c["secretKey"]): set(i.get("actions", []))
                     for i in identities for c in i.get("credentials", [])}
        except (OSError, ValueError, KeyError, TypeError) as e:
            fail(host, None, f"not a SeaweedFS identity file: {e}")
            return None, None
        bucket = upload = None
        for name in self.services:
            env, script = self.env(name), " ".join(self.cmd[name])
            key = f"services.{name}.environment"
            if "AWS_ACCESS_KEY_ID" not in env:
                if self.cmd[name][:1] in (["serve"], ["worker"]):
                    fail(f, key, "no S3 credentials (AWS_ACCESS_KEY_ID, ...)")
                continue
            pair = (env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY"))
            need = {"Read", "Write", "List"}
            m = re.search(r"create-bucket --bucket ['\"]?([a-z0-9.-]+)|mb s3://([a-z0-9.-]+)",
                          script)
            if m:
                need.add("Admin")
                bucket = m.group(1) or m.group(2)
                up = re.search(r"s3 (?:cp|sync) .*?(s3://[^\s'\";]+)", script)
                upload = up.group(1) if up else None
            if pair not in creds:
                fail(f, f"{key}.AWS_ACCESS_KEY_ID",
                     f"{pair[0]!r} with its secret key is not an identity in {host}")
            elif not need <= creds[pair]:
                fail(host, "identities.actions", f"{name} needs {sorted(need - creds[pair])}")
            if str(env.get("AWS_ENDPOINT_URL")).rstrip("/") != want:
                fail(f, f"{key}.AWS_ENDPOINT_URL", f"{env.get('AWS_ENDPOINT_URL')!r} is not {want}")
            if name in self.sparq and want.startswith("http:") and env.get(
                    "AWS_ALLOW_HTTP") != "true":
                fail(f, f"{key}.AWS_ALLOW_HTTP", 'needs "true" for an http endpoint')
        return bucket, upload

    def check_submit(self, name, bucket, upload):
        f, key = self.file, f"services.{name}.command"
        in_image = next((a for a in self.cmd[name][1:] if a.endswith(".toml")), None)
        repo = image_path_to_repo(self.stage, in_image) if in_image else None
        if repo is None:
            return fail(f, key, f"{in_image!r}: the Dockerfile copies no such spec into the image")
        if not (self.root / repo).is_file():
            return fail(f, key, f"{repo}: no such file in the repo")
        spec, label = check_job_spec(self.root / repo, str(repo), self.root), str(repo)
        if spec.get("kind") != "encode":
            fail(label, "kind", f'the {name} service submits it as an encode job: "encode"')
        serve = next((n for n in self.sparq if self.cmd[n][:1] == ["serve"]), None)
        args = self.cmd.get(serve) or []
        s3_roots = [a.rstrip("/") + "/" for i, a in enumerate(args[1:], 1)
                    if args[i - 1] == "--allow-root" and a.startswith("s3://")]
        for k in ("input", "output"):
            if not str(spec.get(k, "")).startswith(f"s3://{bucket}/"):
                fail(label, k, f"{spec.get(k)!r} is not in s3://{bucket}/, the bucket s3-init "
                     "creates")
            if not any(str(spec.get(k, "")).startswith(r) for r in s3_roots):
                fail(label, k, f"{spec.get(k)!r} is under no --allow-root s3://... of "
                     f"services.{serve}: the coordinator refuses it")
        if upload and str(spec.get("input", "")).rstrip("/") != upload.rstrip("/"):
            fail(label, "input", f"{spec.get('input')!r}, but s3-init uploads to {upload}")
        for init in self.services:
            if bucket and init != name and f"--bucket {bucket}" in " ".join(self.cmd[init]):
                self.waits_for(name, init, "service_completed_successfully")
        if self.services[name].get("restart", "no") != "no":
            fail(f, f"services.{name}.restart", 'a one-shot client needs restart: "no"')


def check_compose(root, schema):
    file = Compose.file
    try:
        doc = interpolate(yaml.safe_load((root / file).read_text()), file)
    except (OSError, yaml.YAMLError) as e:
        return fail(file, None, f"cannot read: {e}")
    validator = jsonschema.Draft201909Validator(schema, format_checker=format_checker())
    for err in sorted(validator.iter_errors(doc), key=lambda e: [str(p) for p in e.path]):
        best = jsonschema.exceptions.best_match([err])
        path = ".".join(str(p) for p in best.absolute_path) or "(top level)"
        fail(file, path, f"{best.message} (compose schema)")
    if "version" in doc:
        fail(file, "version", "obsolete in the compose spec: remove it")
    Compose(root, doc).check()


# ---------------------------------------------------------------- Kubernetes

def check_container(file, where, c, secrets):
    """Token, S3 credentials and $(VAR) references of one sparq container."""
    env = {e.get("name"): e for e in c.get("env") or []}
    args = argv(c.get("command")) + argv(c.get("args"))
    ref = ((env.get("SPARQ_TOKEN") or {}).get("valueFrom") or {}).get("secretKeyRef") or {}
    secret = secrets.get(ref.get("name")) or {}
    if ref.get("key") not in {**(secret.get("data") or {}), **(secret.get("stringData") or {})}:
        fail(file, f"{where}.env.SPARQ_TOKEN", "must come from a Secret key in this file "
             "(valueFrom.secretKeyRef)")
    for var in re.findall(r"\$\((\w+)\)", " ".join(args)):
        if var not in env:
            fail(file, f"{where}.args", f"$({var}) is not an env var of the container")
    refs = [(s.get("secretRef") or {}).get("name") for s in c.get("envFrom") or []]
    for name in refs:
        if name and name not in secrets:
            fail(file, f"{where}.envFrom", f"Secret {name} is not in this file")
    if next((a for a in args if a in SPARQ_COMMANDS), None) in ("serve", "worker") and (
            "sparq-s3" not in refs):
        fail(file, f"{where}.envFrom", "S3 credentials should come from the Secret sparq-s3")
    return args


def load_k8s(root, file):
    """The objects of a manifest by kind and name, each checked against the Kubernetes schemas
    (strict) when kubernetes-validate is installed; None when the file cannot be read."""
    try:
        docs = [d for d in yaml.safe_load_all((root / file).read_text()) if d is not None]
    except (OSError, yaml.YAMLError) as e:
        return fail(file, None, f"cannot read: {e}")
    try:
        import kubernetes_validate as kv
    except ImportError:
        kv = None
    objs = {}
    for i, d in enumerate(docs, 1):
        name = (d.get("metadata") or {}).get("name") if isinstance(d, dict) else None
        if not name or not d.get("apiVersion") or not d.get("kind"):
            fail(file, f"document {i}", "needs apiVersion, kind and metadata.name")
            continue
        objs.setdefault(d["kind"], {})[name] = d
        try:
            kv and kv.validate(d, kv.latest_version(), strict=True)
        except kv.ValidationError as e:
            path = ".".join(str(p) for p in e.absolute_path)
            fail(file, f"{d['kind']}/{name}.{path}", f"{e.message} (Kubernetes "
                 f"{kv.latest_version()} schema)")
    return objs


def check_k8s(root):
    file = "jobs/serve-k8s.yaml"
    objs = load_k8s(root, file)
    if objs is None:
        return
    secrets, coord, worker = objs.get("Secret", {}), None, None
    for kind in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
        for name, d in objs.get(kind, {}).items():
            tmpl = (d.get("spec") or {}).get("template") or {}
            labels = (tmpl.get("metadata") or {}).get("labels") or {}
            match = ((d["spec"].get("selector") or {}).get("matchLabels")) or {}
            if kind != "Job" and not (match and match.items() <= labels.items()):
                fail(file, f"{kind}/{name}.spec.selector", "does not match the pod labels")
            for c in (tmpl.get("spec") or {}).get("containers") or []:
                where = f"{kind}/{name}.containers.{c.get('name')}"
                args = argv(c.get("command")) + argv(c.get("args"))
                if not SPARQ_COMMANDS & set(args):
                    continue
                args = check_container(file, where, c, secrets)
                if "serve" in args:
                    coord = (where, tmpl["spec"], labels, c, args)
                if "worker" in args:
                    worker = (where, args)
                    gpus = str(((c.get("resources") or {}).get("limits") or {}).get(
                        "nvidia.com/gpu", ""))
                    if not gpus.isdigit() or int(gpus) < 1:
                        fail(file, f"{where}.resources.limits", "a worker needs nvidia.com/gpu: 1")
                    if not str(flag(args, "--device", "")).startswith("cuda"):
                        fail(file, f"{where}.args", "a GPU worker runs with --device cuda:0")
    if coord is None or worker is None:
        return fail(file, None, "needs a container running `sparq serve` and one running "
                    "`sparq worker`")
    where, pod, labels, c, args = coord
    port = port_of(flag(args, "--listen", "127.0.0.1:7070"))
    ports = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
    if port not in ports.values():
        fail(file, f"{where}.ports", f"the --listen port {port} is not a containerPort")
    tls = flag(args, "--tls-cert") is not None and flag(args, "--tls-key") is not None
    if not tls:
        fail(file, f"{where}.args", "--tls-cert and --tls-key are needed: workers refuse "
             "http:// to another pod")
    for probe in ("readinessProbe", "livenessProbe"):
        get = (c.get(probe) or {}).get("httpGet") or {}
        if get.get("path") != "/healthz" or ports.get(get.get("port"), get.get("port")) != port:
            fail(file, f"{where}.{probe}", f"should be httpGet /healthz on port {port}")
        if tls and get.get("scheme") != "HTTPS":
            fail(file, f"{where}.{probe}", "the coordinator serves HTTPS: scheme: HTTPS")
    state = str(PurePosixPath(flag(args, "--state", "sparq.db")).parent)
    mounts = {m.get("mountPath"): m.get("name") for m in c.get("volumeMounts") or []}
    claim = next(((v.get("persistentVolumeClaim") or {}).get("claimName")
                  for v in pod.get("volumes") or [] if v.get("name") == mounts.get(state)), None)
    if claim not in objs.get("PersistentVolumeClaim", {}):
        fail(file, f"{where}.volumeMounts", f"the state folder {state} is not on a "
             "PersistentVolumeClaim of this file")
    svc = next((s for s in objs.get("Service", {}).values()
                if (s.get("spec") or {}).get("selector")
                and s["spec"]["selector"].items() <= labels.items()), None)
    if svc is None:
        return fail(file, "Service", f"none selects the coordinator's pod labels {labels}")
    sport = (svc["spec"].get("ports") or [{}])[0]
    if ports.get(sport.get("targetPort"), sport.get("targetPort")) != port:
        fail(file, f"Service/{svc['metadata']['name']}.spec.ports", f"targetPort is not {port}")
    want = f"https://{svc['metadata']['name']}:{sport.get('port')}"
    if str(flag(worker[1], "--coordinator")).rstrip("/") != want:
        fail(file, f"{worker[0]}.args", f"--coordinator should be {want}")


def mounted_file(file, where, pod, c, path, objs):
    """The text of the ConfigMap key mounted at `path` in container `c`, or None."""
    vols = {v.get("name"): v for v in pod.get("volumes") or []}
    for m in c.get("volumeMounts") or []:
        if m.get("name") not in vols:
            fail(file, f"{where}.volumeMounts", f"{m.get('name')}: no such volume in the pod")
    for m in c.get("volumeMounts") or []:
        mount = PurePosixPath(m.get("mountPath", "/"))
        if mount not in PurePosixPath(path).parents:
            continue
        cm = (vols.get(m.get("name")) or {}).get("configMap") or {}
        data = ((objs.get("ConfigMap") or {}).get(cm.get("name")) or {}).get("data") or {}
        key = str(PurePosixPath(path).relative_to(mount))
        if key not in data:
            fail(file, f"{where}.volumeMounts", f"{path}: no ConfigMap of this file has key "
                 f"{key} (mounted from {cm.get('name')!r})")
            return None
        return data[key]
    fail(file, f"{where}.args", f"--config {path} is not in a volume the container mounts")
    return None


def check_indexed_job(root):
    """jobs/encode-indexed-job.yaml: an Indexed Job of `sparq encode --task-index auto` whose
    --task-count is its completions, and a finalize Job over the same job file and count."""
    file = "jobs/encode-indexed-job.yaml"
    objs = load_k8s(root, file)
    if objs is None:
        return
    secrets, runs = objs.get("Secret", {}), {}
    for name, d in (objs.get("Job") or {}).items():
        spec = d.get("spec") or {}
        pod = (spec.get("template") or {}).get("spec") or {}
        for c in pod.get("containers") or []:
            where = f"Job/{name}.containers.{c.get('name')}"
            args = argv(c.get("command")) + argv(c.get("args"))
            if args[:1] != ["encode"]:
                fail(file, f"{where}.args", "should run `sparq encode` (the image's entrypoint)")
                continue
            if not str(c.get("image", "")).strip():
                fail(file, f"{where}.image", "missing")
            for ref in [(s.get("secretRef") or {}).get("name") for s in c.get("envFrom") or []]:
                if ref not in secrets:
                    fail(file, f"{where}.envFrom", f"Secret {ref} is not in this file")
            count = flag(args, "--task-count")
            job = mounted_file(file, where, pod, c, flag(args, "--config", ""), objs)
            role = "finalize" if "--finalize" in args else "encode"
            runs[role] = (where, c.get("image"), flag(args, "--config"), count)
            if job is not None:
                try:
                    toml = tomllib.loads(job)
                except tomllib.TOMLDecodeError as e:
                    fail(file, f"{where} job file", f"not TOML: {e}")
                    toml = {}
                if not isinstance(toml.get("shard_rows"), int):
                    fail(file, f"{where} job file", "needs shard_rows, so every pod plans the "
                         "same shards")
                for k in ("input", "output"):
                    if not str(toml.get(k, "")).startswith("s3://"):
                        fail(file, f"{where} job file", f"{k}: pods share only an object store")
            if role == "finalize":
                continue
            if spec.get("completionMode") != "Indexed":
                fail(file, f"Job/{name}.spec.completionMode", "should be Indexed: it sets "
                     "JOB_COMPLETION_INDEX, which --task-index auto reads")
            if flag(args, "--task-index") != "auto":
                fail(file, f"{where}.args", "--task-index auto (from JOB_COMPLETION_INDEX)")
            if str(count) != str(spec.get("completions")):
                fail(file, f"{where}.args", f"--task-count {count} is not the Job's completions "
                     f"{spec.get('completions')}")
            if (spec.get("parallelism") or 1) > (spec.get("completions") or 1):
                fail(file, f"Job/{name}.spec.parallelism", "more than completions")
            if not isinstance(spec.get("backoffLimitPerIndex"), int):
                fail(file, f"Job/{name}.spec.backoffLimitPerIndex", "retry each index on its own")
            if pod.get("restartPolicy") != "Never":
                fail(file, f"Job/{name}.template.spec.restartPolicy", "backoffLimitPerIndex "
                     "needs Never")
            gpus = ((c.get("resources") or {}).get("limits") or {}).get("nvidia.com/gpu")
            cuda = str(flag(args, "--devices", "")).startswith("cuda")
            if bool(gpus) != cuda:
                fail(file, f"{where}", "nvidia.com/gpu limit and --devices cuda:0 go together")
    if set(runs) != {"encode", "finalize"}:
        return fail(file, None, "needs an Indexed Job running `sparq encode --task-index auto` "
                    "and a Job running `sparq encode --finalize`")
    (_, img, cfg, n), (where, fimg, fcfg, fn) = runs["encode"], runs["finalize"]
    if (fimg, fcfg, fn) != (img, cfg, n):
        fail(file, where, f"image, --config and --task-count ({fimg}, {fcfg}, {fn}) differ from "
             f"the encode Job's ({img}, {cfg}, {n})")


# ---------------------------------------------------------------- Slurm

SCRIPTS = ("jobs/*.sbatch", "jobs/*.sh", "scripts/*.sh")
GPU_REQUEST = re.compile(r"(--gpus|--gres[= ]\S*gpu|--gpus-per-\w+|-G)\b")


def check_scripts(root):
    """Launch and helper scripts: `bash -n`, #SBATCH placement, no GPU request in #SBATCH
    lines (a CPU cluster could not schedule the job; GPUs are asked for at submit time), and
    shellcheck when installed."""
    files = sorted({p for g in SCRIPTS for p in root.glob(g)})
    for path in files:
        file = str(path.relative_to(root))
        r = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        if r.returncode:
            fail(file, None, "bash -n: " + r.stderr.strip().replace(str(path), file))
        started = False
        for n, line in enumerate(path.read_text().splitlines(), 1):
            s = line.strip()
            if s.startswith("#SBATCH"):
                if started:
                    fail(file, f"line {n}", "sbatch ignores #SBATCH after the first command")
                if GPU_REQUEST.search(s):
                    fail(file, f"line {n}", "a GPU request in #SBATCH: CPU clusters cannot "
                         "schedule it; ask for GPUs on the sbatch command line")
            started |= bool(s) and not s.startswith("#")
    if subprocess.run(["sh", "-c", "command -v shellcheck"], capture_output=True).returncode:
        return
    r = subprocess.run(["shellcheck", "-S", "warning", "-f", "gcc", *map(str, files)],
                       capture_output=True, text=True)
    for ln in r.stdout.splitlines():
        fail(ln.split(":", 1)[0].removeprefix(str(root) + "/"), None,
             "shellcheck: line " + ln.split(":", 1)[1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent,
                    help="the repo to check (default: this script's repo)")
    ap.add_argument("--compose-schema", default=os.environ.get("SPARQ_COMPOSE_SCHEMA"),
                    help=f"the {SCHEMA_WHEEL} wheel or its {SCHEMA_MEMBER}")
    ap.add_argument("--fetch-schema", action="store_true",
                    help="pip download the wheel into ROOT/.cache/compose-schema when missing")
    a = ap.parse_args()
    root = a.root.resolve()
    schema, source = find_schema(root, a.compose_schema, a.fetch_schema)
    check_compose(root, schema)
    for spec in sorted((root / "jobs").glob("*.toml")):
        check_job_spec(spec, str(spec.relative_to(root)), root)
    check_k8s(root)
    check_indexed_job(root)
    for other in sorted((root / "jobs").glob("*.yaml")):
        if other.name not in ("serve-k8s.yaml", "encode-indexed-job.yaml"):
            load_k8s(root, str(other.relative_to(root)))
    check_scripts(root)
    unique = list(dict.fromkeys(problems))
    for p in unique:
        print(p, file=sys.stderr)
    if unique:
        print(f"check-deploy: {len(unique)} problem(s)", file=sys.stderr)
        return 1
    k8s = "kubernetes-validate" if importlib.util.find_spec("kubernetes_validate") else "absent"
    shellcheck = "shellcheck" if shutil.which("shellcheck") else "no shellcheck"
    print(f"check-deploy: ok (compose schema: {source}; Kubernetes schemas: {k8s}; {shellcheck})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
