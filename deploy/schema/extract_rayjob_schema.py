"""Extract the RayJob ray.io/v1 openAPIV3Schema from KubeRay's CRD (1.4 MB of YAML) into a compact JSON file.

git -C kuberay show v1.7.0:ray-operator/config/crd/bases/ray.io_rayjobs.yaml > rayjobs.yaml
python deploy/schema/extract_rayjob_schema.py rayjobs.yaml "v1.7.0 (commit 59d663aeec13760646da3db9c1cf8cfe883e30b7)" \
    > deploy/schema/rayjob-v1.json
"""

import json
import sys

import yaml


def extract(crd: dict, source: str) -> dict:
    """The served ray.io/v1 schema of a RayJob CRD, with `source` recorded under `$comment`."""
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return {"$comment": source, **version["schema"]["openAPIV3Schema"]}


if __name__ == "__main__":
    with open(sys.argv[1]) as handle:
        crd = yaml.safe_load(handle)
    source = f"KubeRay {sys.argv[2]}: ray-operator/config/crd/bases/ray.io_rayjobs.yaml, spec.versions[v1]"
    json.dump(extract(crd, source), sys.stdout, sort_keys=True, separators=(",", ":"))
    sys.stdout.write("\n")
