"""values.schema.json rejects bad values at `helm template`/`install` time, and the chart's generated
files (README values table, the AppArgs part of the schema) are what helm/gen_readme.py generates."""
from __future__ import annotations

import json
import subprocess
import sys

import jsonschema
import pytest
import yaml

from k8s_chart import CHART, ROOT, SCENARIOS, template
from serve.config import AppArgs

BAD = {
    # wrong types
    "workers.cpu.replicas=two": "/workers/cpu/replicas",
    "networkPolicy.enabled=maybe": "/networkPolicy/enabled",
    "serve.port=0": "/serve/port",
    "serve.args.retrieve_k=0": "/serve/args/retrieve_k",  # AppArgs: ge=1
    "serve.args.intent.precision=int4": "/serve/args/intent/precision",
    "serve.args.generator_backend=openai": "/serve/args/generator_backend",
    "serve.deployments.Reranker.ray_actor_options.num_gpus=-1": "/serve/deployments/Reranker/ray_actor_options/num_gpus",
    "rayService.upgradeStrategy=Rolling": "/rayService/upgradeStrategy",
    "image.pullPolicy=Sometimes": "/image/pullPolicy",
    "serviceAccount.roleArn=my-role": "/serviceAccount/roleArn",
    # unknown keys (typos)
    "workers.cpu.replica=2": "/workers/cpu",
    "serve.args.retrieve_kk=5": "/serve/args",
    "serve.deployments.Reranker.num_replica=2": "/serve/deployments/Reranker",
    "serve.deployments.Ranker.num_replicas=2": "invalid propertyName 'Ranker'",
    "monitoring.podMonitors.enabled=false": "/monitoring",
    "extra=1": "additional properties 'extra' not allowed",
    # never a secret inline: the password comes from secrets.opensearch.existingSecret
    "serve.args.opensearch.password=hunter2": "/serve/args/opensearch",
    # Ray would refuse both
    "serve.deployments.Retriever.num_replicas=2": "/serve/deployments/Retriever",
}


@pytest.mark.parametrize("setting", BAD)
def test_helm_refuses_bad_values(setting):
    done = template("--set", setting)
    assert done.returncode != 0, f"{setting} was accepted"
    assert "values don't meet the specifications of the schema" in done.stderr
    assert BAD[setting] in done.stderr, done.stderr


def test_fixed_replicas_replace_autoscaling_with_null():
    done = template("--set", "serve.deployments.Retriever.num_replicas=2",
                    "--set", "serve.deployments.Retriever.autoscaling_config=null")
    assert done.returncode == 0, done.stderr


def test_scenario_files_and_defaults_validate_with_jsonschema_too():
    """The same schema read by Python's jsonschema (draft 2020-12) accepts every shipped values file."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.validate(defaults, schema)
    for scenario in SCENARIOS:
        values = yaml.safe_load((CHART / "ci" / f"{scenario}-values.yaml").read_text())
        jsonschema.validate(values, schema)  # partial files: every key they set is known and typed


def test_schema_of_serve_args_is_app_args():
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["properties"]["serve"]["properties"]["args"] == {"$ref": "#/$defs/AppArgs"}
    assert set(schema["$defs"]["AppArgs"]["properties"]) == set(AppArgs.model_fields)
    assert "password" not in schema["$defs"]["OpenSearchSettings"]["properties"]


def test_generated_chart_files_are_up_to_date():
    done = subprocess.run([sys.executable, str(ROOT / "helm" / "gen_readme.py"), "--check"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr


def test_readme_documents_every_value():
    sys.path.insert(0, str(ROOT / "helm"))
    from gen_readme import documented_values

    text = (CHART / "values.yaml").read_text()
    documented = {key for key, _, _ in documented_values(text)}
    readme = (CHART / "README.md").read_text()

    def leaves(node, prefix=""):
        for key, value in node.items():
            path = f"{prefix}{key}"
            if path in documented:
                yield path
            elif isinstance(value, dict) and value:
                yield from leaves(value, path + ".")
            else:
                yield path

    for key in leaves(yaml.safe_load(text)):
        assert key in documented, f"{key} has no `# --` comment in values.yaml"
        assert f"| {key} |" in readme
