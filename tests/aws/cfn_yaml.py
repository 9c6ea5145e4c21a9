"""A YAML loader that reads CloudFormation's short-form tags (!Ref, !GetAtt, !Sub, ...)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

_FUNCTIONS = (
    "And",
    "Base64",
    "Cidr",
    "Equals",
    "FindInMap",
    "GetAZs",
    "If",
    "ImportValue",
    "Join",
    "Not",
    "Or",
    "Select",
    "Split",
    "Sub",
    "Transform",
)


class CfnLoader(yaml.SafeLoader):
    """SafeLoader plus CloudFormation tags, each read as its long form ({"Fn::If": [...]})."""


def _construct(node: yaml.Node, loader: CfnLoader) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    assert isinstance(node, yaml.MappingNode)
    return loader.construct_mapping(node, deep=True)


def _function(name: str) -> Any:
    def construct(loader: CfnLoader, node: yaml.Node) -> Any:
        return {f"Fn::{name}": _construct(node, loader)}

    return construct


def _ref(loader: CfnLoader, node: yaml.Node) -> Any:
    return {"Ref": _construct(node, loader)}


def _condition(loader: CfnLoader, node: yaml.Node) -> Any:
    return {"Condition": _construct(node, loader)}


def _get_att(loader: CfnLoader, node: yaml.Node) -> Any:
    value = _construct(node, loader)
    if isinstance(value, str):
        value = value.split(".", 1)
    return {"Fn::GetAtt": value}


for _name in _FUNCTIONS:
    CfnLoader.add_constructor(f"!{_name}", _function(_name))
CfnLoader.add_constructor("!Ref", _ref)
CfnLoader.add_constructor("!Condition", _condition)
CfnLoader.add_constructor("!GetAtt", _get_att)


def load_template(path: Path) -> dict[str, Any]:
    # CfnLoader is a SafeLoader: it builds only plain data, whatever the file says.
    document = yaml.load(path.read_text(), Loader=CfnLoader)
    assert isinstance(document, dict)
    return document
