"""Malformed recipes and arguments through the real CLI entry: a short error naming the key, exit 2, no traceback,
nothing loaded or trained. Also pins safe loading: recipe strings are never evaluated, trust_remote_code is off."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "recipes" / "smoke.yaml"
sys.path.insert(0, str(ROOT))

import run_autodistill  # noqa: E402
from autodistill_trainer.recipe import build_recipe, load_recipe  # noqa: E402
from autodistill_trainer.errors import ConfigError  # noqa: E402


def smoke() -> dict:
    return yaml.safe_load(SMOKE.read_text())


def _ad(r):
    return r["auto_distillation"]


def _set(path: str, value):
    """A mutation setting the dotted ``path`` of the recipe to ``value``."""

    def mutate(r):
        *parents, last = path.split(".")
        node = r
        for p in parents:
            node = node[p]
        node[last] = value

    return mutate


def _pop(path: str):
    def mutate(r):
        *parents, last = path.split(".")
        node = r
        for p in parents:
            node = node[p]
        node.pop(last)

    return mutate


def _rename(path: str, new: str):
    def mutate(r):
        *parents, last = path.split(".")
        node = r
        for p in parents:
            node = node[p]
        node[new] = node.pop(last)

    return mutate


MANUAL_FLASH = {
    "block_names": ["mobilebert.encoder.layer.0", "mobilebert.encoder.layer.1"],
    "layer_mappings_for_knowledge_transfer": [
        [["mobilebert.encoder.layer.0.output", "bert.encoder.layer.2.output"]],
        [["mobilebert.encoder.layer.1.output", "bert.encoder.layer.5.output"]],
    ],
    "train_steps": 3,
}


def _manual_flash(**changes):
    def mutate(r):
        flash = copy.deepcopy(MANUAL_FLASH)
        flash.update(changes)
        _ad(r)["flash_distillation"] = flash

    return mutate


# (id, mutation of the smoke recipe | raw YAML text, extra CLI arguments, expected part of the message)
CASES = [
    ("invalid_yaml", "model: {name: x\nteacher: [\n", [], "is not valid YAML at line 2, column 8: expected ',' or '}'"),
    ("not_a_mapping", "- a\n- b\n", [], "must be a YAML mapping of sections, got a list"),
    ("unknown_section", _rename("model", "modle"), [], "recipe: unknown section 'modle'. Did you mean: 'model'?"),
    (
        "unknown_model_key",
        _set("model.student_clas", "x"),
        [],
        "model: unknown key 'student_clas'. Did you mean: 'student_class'?",
    ),
    (
        "unknown_teacher_key",
        _set("teacher.trust_remote", True),
        [],
        "teacher: unknown key 'trust_remote'. Did you mean: 'trust_remote_code'?",
    ),
    ("unknown_data_key", _set("data.max_len", 3), [], "data: unknown key 'max_len'. Did you mean: 'max_length'"),
    (
        "unknown_baseline_key",
        _set("baseline.enable", True),
        [],
        "baseline: unknown key 'enable'. Did you mean: 'enabled'?",
    ),
    (
        "unknown_auto_distillation_key",
        _set("auto_distillation.serch", {}),
        [],
        "auto_distillation: unknown key 'serch'. Did you mean: 'search'?",
    ),
    (
        "unknown_search_key",
        _set("auto_distillation.search.max_trial", 3),
        [],
        "Unknown key 'search.max_trial'. Did you mean: 'max_trials'",
    ),
    (
        "unknown_flash_key",
        _set("auto_distillation.flash_distillation.train_step", 3),
        [],
        "flash_distillation: unknown key 'train_step'. Did you mean: 'train_steps'",
    ),
    (
        "unknown_regular_key",
        _set("auto_distillation.regular_distillation.temprature", 2.0),
        [],
        "regular_distillation: unknown key 'temprature'. Did you mean: 'temperature'?",
    ),
    (
        "unknown_training_argument",
        _set("auto_distillation.train.learning_rat", 1e-3),
        [],
        "auto_distillation.train: unknown key 'learning_rat'. Did you mean: 'learning_rate'",
    ),
    (
        "unknown_evaluation_key",
        _set("auto_distillation.evaluation.latency_repeat", 3),
        [],
        "auto_distillation.evaluation: unknown key 'latency_repeat'. Did you mean: 'latency_repeats'",
    ),
    (
        "unknown_finetune_argument",
        _set("teacher.finetune.max_step", 3),
        [],
        "teacher.finetune: unknown key 'max_step'. Did you mean: 'max_steps'",
    ),
    (
        "unknown_base_config_field",
        _set("model.base_config.num_hiden_layers", 2),
        [],
        "model.base_config: 'num_hiden_layers' is not a MobileBertConfig field. Did you mean: 'num_hidden_layers'",
    ),
    ("wrong_type_int", _set("data.max_length", "long"), [], "data.max_length must be int, got 'long' (str)."),
    (
        "wrong_type_float",
        _set("auto_distillation.train.learning_rate", "fast"),
        [],
        "auto_distillation.train.learning_rate must be float, got 'fast' (str).",
    ),
    (
        "wrong_type_bool",
        _set("teacher.trust_remote_code", "yes"),
        [],
        "teacher.trust_remote_code must be bool, got 'yes' (str).",
    ),
    (
        "train_not_mapping",
        _set("auto_distillation.train", [1]),
        [],
        "auto_distillation.train must be a mapping of TrainingArguments, got [1].",
    ),
    (
        "zero_trials",
        _set("auto_distillation.search.max_trials", 0),
        [],
        "'search.max_trials' must be a positive integer of at most 100000, got 0.",
    ),
    (
        "negative_regular_steps",
        _set("auto_distillation.regular_distillation.train_steps", -1),
        [],
        "regular_distillation.train_steps must be a positive integer number of steps (or a list of them), got -1.",
    ),
    (
        "zero_flash_steps_auto",
        _set("auto_distillation.flash_distillation.train_steps", 0),
        [],
        "flash_distillation.train_steps must be a positive integer number of steps (or a list of them), got 0.",
    ),
    (
        "zero_max_steps",
        _set("auto_distillation.train.max_steps", 0),
        [],
        "auto_distillation.train.max_steps must be a positive number of steps (or -1 to train "
        "num_train_epochs), got 0.",
    ),
    (
        "zero_finetune_steps",
        _set("teacher.finetune.max_steps", 0),
        [],
        "teacher.finetune.max_steps must be a positive number of steps",
    ),
    (
        "zero_batch_size",
        _set("auto_distillation.train.per_device_train_batch_size", 0),
        [],
        "auto_distillation.train.per_device_train_batch_size must be a positive integer, got 0.",
    ),
    (
        "negative_learning_rate",
        _set("auto_distillation.train.learning_rate", -1.0),
        [],
        "auto_distillation.train.learning_rate must be a positive finite number, got -1.0.",
    ),
    (
        "zero_baseline_steps",
        _set("baseline.train_steps", 0),
        [],
        "baseline.train_steps must be a positive integer number of steps or null, got 0.",
    ),
    (
        "negative_temperature",
        _set("auto_distillation.regular_distillation.temperature", -1),
        [],
        "regular_distillation.temperature must be a positive finite number, got -1.",
    ),
    (
        "soft_freeze_out_of_range",
        _set("auto_distillation.flash_distillation.soft_freeze", 2),
        [],
        "flash_distillation.soft_freeze must be a finite number in [0, 1] or null (learning-rate multiplier",
    ),
    (
        "empty_search_space",
        _set("auto_distillation.search.search_space", {}),
        [],
        "'search.search_space' must be a non-empty mapping {name: [values, ...]}.",
    ),
    (
        "empty_value_list",
        _set("auto_distillation.search.search_space.hidden_size", []),
        [],
        "'search.search_space.hidden_size' is an empty list; give at least one value.",
    ),
    (
        "search_space_no_valid_arch",
        _set("auto_distillation.search.search_space.num_attention_heads", [5]),
        [],
        "auto_distillation.search.search_space has no valid architecture",
    ),
    (
        "misspelled_search_space_field",
        _rename("auto_distillation.search.search_space.hidden_size", "hiden_size"),
        [],
        "auto_distillation.search.search_space.hiden_size is not a field of the student config "
        "(MobileBertConfig). Did you mean: 'hidden_size'",
    ),
    (
        "directions_length",
        _set("auto_distillation.search.higher_is_better", [True]),
        [],
        "'search.higher_is_better' has 1 entries but 'search.metrics' has 2; give one direction per metric.",
    ),
    (
        "regular_loss_types_length",
        _set("auto_distillation.regular_distillation.loss_types", ["KL", "MSE"]),
        [],
        "regular_distillation.loss_types has 2 entries but there are 1 mappings: give one per mapping.",
    ),
    (
        "flash_mappings_length",
        _manual_flash(block_names=["mobilebert.encoder.layer.0"]),
        [],
        "flash_distillation.layer_mappings_for_knowledge_transfer has 2 entries but block_names has 1: give "
        "one entry per block.",
    ),
    (
        "unknown_loss_type",
        _set("auto_distillation.regular_distillation.loss_types", ["KLD"]),
        [],
        "unknown loss type 'KLD'; known loss types: CE, Cos, KL, L1, MSE. Did you mean: 'KL'?",
    ),
    (
        "unknown_search_algorithm",
        _set("auto_distillation.search.search_algorithm", "bayes"),
        [],
        "'search.search_algorithm' is 'bayes'; choose one of ['BO', 'TPE', 'NSGA2', 'random', 'grid'].",
    ),
    (
        "unknown_student_class",
        _set("model.student_class", "MobileBertForSequenceClasification"),
        [],
        "model.student_class 'MobileBertForSequenceClasification' is not a transformers model class. Did you "
        "mean: 'MobileBertForSequenceClassification'",
    ),
    (
        "unknown_metric",
        _set("auto_distillation.evaluation.metrics", ["acuracy"]),
        [],
        "auto_distillation.evaluation.metrics: 'acuracy' is not a shipped metric (accuracy, f1, mlm_accuracy) "
        "nor a local path. Did you mean: 'accuracy'?",
    ),
    (
        "unknown_report_to",
        _set("auto_distillation.train.report_to", "wandbx"),
        [],
        "auto_distillation.train.report_to: unknown integration 'wandbx'",
    ),
    ("unknown_teacher_dtype", _set("teacher.dtype", "float17"), [], "teacher.dtype 'float17' is not a floating dtype"),
    (
        "unknown_offline_teacher",
        _set("teacher.pretrained_encoder", "offline:minilm"),
        [],
        "teacher.pretrained_encoder: unknown offline model 'minilm'",
    ),
    (
        "missing_teacher_path",
        _set("teacher.pretrained_encoder", "/nonexistent/encoder"),
        [],
        "teacher.pretrained_encoder '/nonexistent/encoder' is neither an existing directory nor a Hub model id",
    ),
    (
        "missing_train_file",
        lambda r: r["data"].update(dataset_name=None, train_file="/nonexistent/train.csv"),
        [],
        "data.train_file '/nonexistent/train.csv' does not exist",
    ),
    (
        "regular_student_module_absent",
        _set(
            "auto_distillation.regular_distillation.layer_mappings_for_knowledge_transfer",
            [["clasifier", "classifier"]],
        ),
        [],
        "regular_distillation.layer_mappings_for_knowledge_transfer[0] (student side): the student "
        "(MobileBertForSequenceClassification) has no module 'clasifier'. Did you mean: 'classifier'?",
    ),
    (
        "regular_teacher_module_absent",
        _set(
            "auto_distillation.regular_distillation.layer_mappings_for_knowledge_transfer",
            [["classifier", "clasifier"]],
        ),
        [],
        "regular_distillation.layer_mappings_for_knowledge_transfer[0] (teacher side): the teacher has no "
        "module 'clasifier'. Did you mean: 'classifier'?",
    ),
    (
        "flash_block_absent",
        _manual_flash(block_names=["mobilebert.encoder.layr.0", "mobilebert.encoder.layer.1"]),
        [],
        "flash_distillation.block_names[0]: the student (MobileBertForSequenceClassification) has no module "
        "'mobilebert.encoder.layr.0'. Did you mean: 'mobilebert.encoder.layer.0'",
    ),
    # the smoke student has 2 layers (model.base_config): layer.2 exists in no student
    (
        "flash_student_layer_absent",
        _manual_flash(
            layer_mappings_for_knowledge_transfer=[
                [["mobilebert.encoder.layer.0.output", "bert.encoder.layer.2.output"]],
                [["mobilebert.encoder.layer.2.output", "bert.encoder.layer.5.output"]],
            ]
        ),
        [],
        "flash_distillation.layer_mappings_for_knowledge_transfer[1][0] (student side): the student "
        "(MobileBertForSequenceClassification) has no module 'mobilebert.encoder.layer.2.output'.",
    ),
    # the teacher (all-MiniLM-L6-v2) has 6 layers
    (
        "flash_teacher_layer_absent",
        _manual_flash(
            layer_mappings_for_knowledge_transfer=[
                [["mobilebert.encoder.layer.0.output", "bert.encoder.layer.2.output"]],
                [["mobilebert.encoder.layer.1.output", "bert.encoder.layer.9.output"]],
            ]
        ),
        [],
        "flash_distillation.layer_mappings_for_knowledge_transfer[1][0] (teacher side): the teacher has no "
        "module 'bert.encoder.layer.9.output'. Did you mean: 'bert.encoder.layer.5.output'",
    ),
    (
        "python_tag",
        "model: !!python/object/apply:os.system ['echo evaluated']\n",
        [],
        "uses the YAML tag '!!python/object/apply:os.system', which would build a Python object; recipes are "
        "plain data",
    ),
    ("unknown_override", None, ["--max_trails", "3"], "unknown override --max_trails. Did you mean: 'max_trials'"),
    (
        "unknown_dotted_override",
        None,
        ["--auto_distillation.search.max_trail", "3"],
        "Unknown key 'search.max_trail'. Did you mean: 'max_trials'",
    ),
    ("override_without_value", None, ["--max_trials"], "--max_trials needs a value (e.g. --max_trials 3)."),
    ("override_not_a_flag", None, ["max_trials=3"], "unexpected argument 'max_trials=3': overrides are --key value"),
    (
        "override_bad_value",
        None,
        ["--max_trials", "-2"],
        "'search.max_trials' must be a positive integer of at most 100000, got -2.",
    ),
]


def _write(tmp_path: Path, name: str, spec) -> Path:
    path = tmp_path / f"{name}.yaml"
    if isinstance(spec, str):
        path.write_text(spec)
    else:
        recipe = smoke()
        if spec is not None:
            spec(recipe)
        path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.mark.parametrize("name,spec,args,expected", CASES, ids=[c[0] for c in CASES])
def test_malformed_input_fails_fast_with_a_message(tmp_path, capsys, name, spec, args, expected):
    path = _write(tmp_path, name, spec)
    output_dir = tmp_path / "out"
    rc = run_autodistill.main([str(path), "--output_dir", str(output_dir), *args])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err  # one short line
    assert expected in err, err
    assert "Traceback" not in err
    assert not output_dir.exists()  # nothing was loaded, trained or written


def test_missing_recipe_file(tmp_path, capsys):
    assert run_autodistill.main([str(tmp_path / "nope.yaml")]) == 2
    assert "does not exist; give the path of a YAML recipe" in capsys.readouterr().err


def test_manual_mappings_that_exist_are_accepted(tmp_path):
    recipe = smoke()
    _manual_flash()(recipe)
    parsed = build_recipe(recipe)
    assert parsed.autodistillation.flash_distillation.block_names == MANUAL_FLASH["block_names"]
    assert [s.train_steps for s in parsed.autodistillation.flash_distillation.stages()] == [3, 3]


def test_yaml_12_floats_and_overrides(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(SMOKE.read_text().replace("learning_rate: 1.0e-3", "learning_rate: 1e-3"))
    recipe = load_recipe(
        str(path), ["--auto_distillation.regular_distillation.learning_rate", "5e-4", "--heartbeat_interval", "5"]
    )
    assert recipe.training.learning_rate == 1e-3
    assert recipe.autodistillation.regular_distillation.learning_rate == 5e-4
    assert recipe.autodistillation.search.heartbeat_interval == 5


@pytest.mark.parametrize(
    "name,spec,args,expected",
    [
        (
            "unknown_section",
            _rename("data", "dataa"),
            [],
            "error: recipe: unknown section 'dataa'. Did you mean: 'data'?",
        ),
        (
            "python_tag",
            "model: !!python/object/apply:os.system ['touch {marker}']\n",
            [],
            "uses the YAML tag '!!python/object/apply:os.system'",
        ),
        (
            "unknown_override",
            None,
            ["--learning_rat", "1e-3"],
            "error: unknown override --learning_rat. Did you mean: 'learning_rate'",
        ),
    ],
    ids=["unknown_section", "python_tag", "unknown_override"],
)
def test_real_process_exits_nonzero_without_traceback(tmp_path, name, spec, args, expected):
    marker = tmp_path / "evaluated"
    if isinstance(spec, str):
        spec = spec.format(marker=marker)
    path = _write(tmp_path, name, spec)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "run_autodistill.py"), str(path), "--output_dir", str(tmp_path / "out"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert expected in proc.stderr
    assert proc.stderr.strip().count("\n") == 0, proc.stderr  # the error line only
    assert not marker.exists()  # the tag's command never ran
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------- safe loading


def test_recipe_strings_are_never_evaluated(tmp_path):
    marker = tmp_path / "evaluated"
    for text in (
        f"model: !!python/object/apply:os.system ['touch {marker}']\n",
        f"output_dir: !!python/object/new:subprocess.Popen [['touch', '{marker}']]\n",
        "model: !!python/name:os.system\n",
    ):
        path = tmp_path / "r.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError, match="recipes are plain data"):
            load_recipe(str(path))
    # a string that looks like code stays a string, also in overrides
    recipe = load_recipe(
        str(SMOKE), ["--model.name", "__import__('os').system('touch x')", "--study_name", "!!python/name:os.system"]
    )
    assert recipe.model.name == "__import__('os').system('touch x')"
    assert recipe.autodistillation.search.study_name == "!!python/name:os.system"
    assert not marker.exists()


def test_trust_remote_code_defaults_to_false():
    recipe = load_recipe(str(SMOKE))
    assert "trust_remote_code" not in recipe.raw.get("teacher", {})
    assert recipe.teacher.trust_remote_code is False
    data = smoke()
    data["teacher"]["trust_remote_code"] = True
    assert build_recipe(data).teacher.trust_remote_code is True  # only when the user asks


def test_package_uses_safe_loaders_only():
    """No unsafe deserialisation in the package or the CLI (a cheap audit that fails on regressions)."""
    import re

    sources = [ROOT / "run_autodistill.py", *sorted((ROOT / "autodistill_trainer").rglob("*.py"))]
    problems = []
    for file in sources:
        text = file.read_text()
        for pattern, why in (
            (r"yaml\.load\((?![^)]*Loader=RecipeLoader)", "yaml.load without a safe loader"),
            (r"yaml\.(unsafe_load|full_load|UnsafeLoader|FullLoader)", "unsafe YAML loader"),
            (r"(?<![\w.])(eval|exec)\(", "eval/exec"),
            (r"\bpickle\.loads?\(|\bdill\.|\bjoblib\.load\(", "pickle"),
            (r"trust_remote_code\s*=\s*True", "trust_remote_code=True"),
            (r"safe_serialization\s*=\s*False", "non-safetensors save"),
        ):
            for match in re.finditer(pattern, text):
                line = text.count("\n", 0, match.start()) + 1
                problems.append(f"{file.relative_to(ROOT)}:{line}: {why}")
        for match in re.finditer(r"torch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in match.group(1):
                problems.append(f"{file.relative_to(ROOT)}: torch.load without weights_only=True")
    assert not problems, problems
