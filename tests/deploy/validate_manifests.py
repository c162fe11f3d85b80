"""Checks deploy/kubernetes for tests/deploy.rs, offline, with the pinned tools of .venv-deploy.

  validate_manifests.py validate DIR VERSION...  every object in DIR/*.yaml against its Kubernetes
      schema (kubernetes-validate, strict: an unknown field fails) for each VERSION; the
      ServiceMonitor, a CRD kubernetes-validate has no schema for, against
      servicemonitor-v1.schema.json. An object of any other kind without a schema fails.
  validate_manifests.py json DIR                 every object of DIR/*.yaml as one JSON list of
      {"file", "object"}, so the Rust test reads the YAML without a YAML crate.
"""

import json
import pathlib
import sys

import jsonschema
import referencing
import yaml
from kubernetes_validate import utils as kubernetes_validate

HERE = pathlib.Path(__file__).resolve().parent
# Custom resources and the schema each is checked against instead.
CRD_SCHEMAS = {("monitoring.coreos.com/v1", "ServiceMonitor"): HERE / "servicemonitor-v1.schema.json"}


def objects(directory):
    files = sorted(pathlib.Path(directory).glob("*.yaml"))
    if not files:
        sys.exit(f"no *.yaml in {directory}")
    for path in files:
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                yield path.name, document


def crd_validator(schema_path, version):
    """A validator for a CRD schema whose metadata and selectors refer to the Kubernetes schemas."""
    definitions = kubernetes_validate.schema_contents(
        f"kubernetes-json-schema/v{version}.0-local-strict/_definitions.json", version
    )
    registry = referencing.Registry().with_resource(
        definitions["$id"], referencing.Resource.from_contents(definitions)
    )
    return jsonschema.Draft202012Validator(json.loads(schema_path.read_text()), registry=registry)


def validate(directory, versions):
    failures = 0
    checked = 0
    for file, obj in objects(directory):
        name = f"{file}: {obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        for version in versions:
            key = (obj.get("apiVersion"), obj.get("kind"))
            try:
                if key in CRD_SCHEMAS:
                    errors = list(crd_validator(CRD_SCHEMAS[key], version).iter_errors(obj))
                    if errors:
                        raise jsonschema.ValidationError(
                            "; ".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors)
                        )
                    how = f"{CRD_SCHEMAS[key].name} (a CRD; metadata and selector as Kubernetes {version})"
                else:
                    kubernetes_validate.validate(obj, version, strict=True)
                    how = f"Kubernetes {version} (strict)"
                print(f"ok    {name} against {how}")
                checked += 1
            except kubernetes_validate.SchemaNotFoundError as e:
                print(f"FAIL  {name}: {e.message}; a custom resource needs a schema in CRD_SCHEMAS")
                failures += 1
            except jsonschema.ValidationError as e:
                path = ".".join(map(str, e.path))
                print(f"FAIL  {name} against Kubernetes {version}: {path}: {e.message}")
                failures += 1
    print(f"{checked} checked, {failures} failed")
    return 1 if failures or not checked else 0


def main():
    if len(sys.argv) >= 4 and sys.argv[1] == "validate":
        return validate(sys.argv[2], sys.argv[3:])
    if len(sys.argv) == 3 and sys.argv[1] == "json":
        json.dump([{"file": f, "object": o} for f, o in objects(sys.argv[2])], sys.stdout)
        return 0
    sys.exit(__doc__)


if __name__ == "__main__":
    sys.exit(main())
