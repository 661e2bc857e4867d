"""Bad input found while validating a recipe (issue 15): each case is refused with one line naming the key, the
value (shortened) and the fix, before any model, data set or weights are loaded."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "recipes" / "smoke.yaml"
sys.path.insert(0, str(ROOT))

import run_autodistill  # noqa: E402
from autodistill_trainer.configs.yaml_loader import MAX_DEPTH, MAX_EXPANDED_NODES  # noqa: E402
from autodistill_trainer.errors import ConfigError  # noqa: E402
from autodistill_trainer.recipe import build_recipe, load_recipe  # noqa: E402


def smoke() -> dict:
    return yaml.safe_load(SMOKE.read_text())


def mutated(path: str, value) -> dict:
    recipe = smoke()
    *parents, last = path.split(".")
    node = recipe
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return recipe


def rejects(recipe: dict, expected: str) -> str:
    with pytest.raises(ConfigError) as info:
        build_recipe(recipe)
    message = str(info.value)
    assert expected in message, message
    assert "\n" not in message and len(message) < 400, message
    return message


# ------------------------------------------------------------------------------------------------- numbers

NON_FINITE = [
    ("auto_distillation.train.learning_rate", float("inf")),
    ("auto_distillation.regular_distillation.temperature", float("inf")),
    ("auto_distillation.search.max_latency_ms", float("nan")),
    ("teacher.finetune.num_train_epochs", float("inf")),
    ("auto_distillation.flash_distillation.soft_freeze", float("-inf")),
    ("teacher.cache_max_gb", float("nan")),
]


@pytest.mark.parametrize("path,value", NON_FINITE, ids=[p for p, _ in NON_FINITE])
def test_non_finite_numbers_are_refused_naming_the_key(path, value):
    rejects(mutated(path, value), f"{path} is not a finite number (.inf/.nan)")


def test_non_finite_numbers_written_in_yaml_are_refused(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(SMOKE.read_text().replace("learning_rate: 1.0e-3", "learning_rate: .inf"))
    with pytest.raises(ConfigError, match=r"auto_distillation\.train\.learning_rate is not a finite number"):
        load_recipe(str(path))


OUT_OF_RANGE = [
    ("auto_distillation.evaluation.latency_repeats", 10**9,
     "auto_distillation.evaluation.latency_repeats must be a positive integer of at most 10000, got 1000000000."),
    ("auto_distillation.evaluation.latency_seq_length", 100000,
     "auto_distillation.evaluation.latency_seq_length must be a positive integer of at most 8192 or null"),
    ("auto_distillation.evaluation.latency_seq_length", 1000,
     "latency_seq_length 1000 exceeds the student's max_position_embeddings (512); use at most 512"),
    ("auto_distillation.evaluation.latency_warmup", -5,
     "auto_distillation.evaluation.latency_warmup must be a non-negative integer of at most 10000, got -5."),
    ("auto_distillation.search.seed", 2**64,
     "'search.seed' must be a non-negative integer seed of at most 4294967295, got 18446744073709551616."),
    ("auto_distillation.train.seed", -1,
     "auto_distillation.train.seed must be a non-negative integer seed of at most 4294967295, got -1."),
    ("teacher.finetune.seed", 2**40, "teacher.finetune.seed must be a non-negative integer seed"),
    ("data.max_length", 10**30, "data.max_length must be an integer in [5, 8192]"),
    ("data.max_length", 1e30, "data.max_length must be int, got 1e+30 (float)."),
    ("data.max_length", 1,
     "data.max_length must be an integer in [5, 8192] (at least 5: two text tokens plus the [CLS]/[SEP] special "
     "tokens, three for sentence pairs), got 1."),
    ("auto_distillation.search.max_trials", 10**9, "'search.max_trials' must be a positive integer of at most 100000"),
]


@pytest.mark.parametrize("path,value,expected", OUT_OF_RANGE, ids=[f"{p}={v}" for p, v, _ in OUT_OF_RANGE])
def test_unbounded_or_nonsensical_values_are_refused(path, value, expected):
    rejects(mutated(path, value), expected)


@pytest.mark.parametrize("key", ["vocab_size", "num_labels", "pad_token_id", "max_position_embeddings"])
def test_fields_the_cli_sets_cannot_be_searched(key):
    rejects(mutated(f"auto_distillation.search.search_space.{key}", [50]),
            f"auto_distillation.search.search_space.{key} cannot be searched: the CLI sets it")


def test_auto_flash_train_steps_must_have_one_entry_per_student_layer():
    # the smoke student has 2 layers (model.base_config.num_hidden_layers) and 'auto' makes one block per layer
    rejects(mutated("auto_distillation.flash_distillation.train_steps", [3, 3, 3]),
            "flash_distillation.train_steps has 3 entries but there are 2 blocks ('auto' makes one block per "
            "student layer and a student has 2)")
    recipe = mutated("auto_distillation.flash_distillation.train_steps", [3, 4])
    assert build_recipe(recipe).autodistillation.flash_distillation.train_steps == [3, 4]


def test_manual_flash_train_steps_must_match_the_blocks():
    flash = {
        "block_names": ["mobilebert.encoder.layer.0", "mobilebert.encoder.layer.1"],
        "layer_mappings_for_knowledge_transfer": [
            [["mobilebert.encoder.layer.0.output", "bert.encoder.layer.2.output"]],
            [["mobilebert.encoder.layer.1.output", "bert.encoder.layer.5.output"]],
        ],
        "train_steps": [3, 3, 3],
    }
    rejects(mutated("auto_distillation.flash_distillation", flash),
            "flash_distillation.train_steps has 3 entries but block_names has 2")


def test_search_metric_that_nothing_produces_is_refused():
    recipe = mutated("auto_distillation.search.metrics", ["accuracy_top5", "latency"])
    rejects(recipe, "auto_distillation.search.metrics: nothing produces 'accuracy_top5'")
    assert build_recipe(mutated("auto_distillation.search.metrics", ["eval_accuracy", "params"]))


@pytest.mark.parametrize("mapping,side", [
    (["", "logitz", "", "logits"], "student side"),
    (["", "logits", "", "prediction_logits"], "teacher side"),
])
def test_a_mapping_whose_output_key_does_not_exist_is_refused(mapping, side):
    recipe = mutated("auto_distillation.regular_distillation.layer_mappings_for_knowledge_transfer", [mapping])
    key = mapping[1] if side == "student side" else mapping[3]
    message = rejects(recipe, f"regular_distillation.layer_mappings_for_knowledge_transfer[0] ({side}): ")
    assert f"output has no key {key!r}" in message and "'logits'" in message


def test_a_mapping_on_output_keys_that_exist_is_accepted():
    recipe = mutated("auto_distillation.regular_distillation.layer_mappings_for_knowledge_transfer",
                     [["", "logits", "", "logits"]])
    assert build_recipe(recipe).autodistillation.regular_distillation.mappings()[0].student_process == "logits"


def test_report_to_an_integration_that_is_not_installed_is_refused():
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:  # wandb is not a dependency
        pytest.skip("wandb is installed here")
    rejects(mutated("auto_distillation.train.report_to", "wandb"),
            "auto_distillation.train.report_to: 'wandb' is not installed (no module 'wandb'); pip install wandb")
    rejects(mutated("teacher.finetune.report_to", ["wandb"]), "teacher.finetune.report_to: 'wandb' is not installed")


@pytest.mark.parametrize("auto_class,concrete", [
    ("AutoModelForSequenceClassification", "MobileBertForSequenceClassification"),
    ("AutoModelForPreTraining", "MobileBertForPreTraining"),
    ("AutoModel", "MobileBertModel"),
])
def test_auto_student_class_is_refused_naming_the_concrete_class(auto_class, concrete):
    rejects(mutated("model.student_class", auto_class), "is an Auto class")
    rejects(mutated("model.student_class", auto_class), f"name the concrete class, e.g. {concrete!r}.")


def test_hub_base_config_not_available_offline_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    rejects(mutated("model.base_config", "some-org/some-unknown-config"),
            "model.base_config 'some-org/some-unknown-config' is not available offline (HF_HUB_OFFLINE is set")


STORAGE = [
    ("sqlite:////nonexistent/dir/x.db", "directory '/nonexistent/dir' does not exist"),
    ("not a url", "'not a url' is not a database URL"),
    ("sqlite://", "names no file; an in-memory database cannot be shared"),
    ("postgresql://bad", "auto_distillation.search.storage 'postgresql://bad'"),
]


@pytest.mark.parametrize("url,expected", STORAGE, ids=[u for u, _ in STORAGE])
def test_malformed_storage_urls_are_refused_at_validation(url, expected):
    rejects(mutated("auto_distillation.search.storage", url), expected)


@pytest.mark.parametrize("url,reason", [
    ("postgresql+psycopg2://bad/db", "could not translate host name"),
    ("postgresql+psycopg2://u@127.0.0.1:1/db", "Connection refused"),
])
def test_a_database_that_cannot_be_reached_is_reported_once_at_validation(url, reason):
    pytest.importorskip("psycopg2")
    message = rejects(mutated("auto_distillation.search.storage", url), f"auto_distillation.search.storage {url!r}: "
                      "cannot connect (")
    assert reason in message and "start the database server" in message


def test_sqlite_storage_in_an_existing_directory_is_accepted(tmp_path):
    url = f"sqlite:///{tmp_path}/study.db"
    assert build_recipe(mutated("auto_distillation.search.storage", url)).autodistillation.search.storage == url
    assert not (tmp_path / "study.db").exists()  # validation creates nothing


# ------------------------------------------------------------------------------------------------- YAML


def _load_text(tmp_path: Path, text: str) -> str:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_recipe(str(path))
    message = str(info.value)
    assert "\n" not in message and len(message) < 400, message
    return message


def _bomb(levels: int = 9) -> str:
    """A flow mapping of anchors, each list holding nine aliases of the previous one: 9**levels values expanded."""
    items = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    items += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "{" + ", ".join(items) + "}"


def test_alias_bomb_under_a_typed_field_is_refused(tmp_path):
    text = SMOKE.read_text().replace("model:\n  name: smoke\n", f"model:\n  name: {_bomb()}\n")
    message = _load_text(tmp_path, text)
    assert f"aliases expand the document to more than {MAX_EXPANDED_NODES} values" in message
    assert "x, x" not in message  # the value is never formatted


def test_alias_bomb_under_an_accepted_dict_is_refused(tmp_path):
    text = SMOKE.read_text().replace("finetune: {max_steps: 8,", f"finetune: {{bomb: {_bomb()}, max_steps: 8,")
    message = _load_text(tmp_path, text)
    assert "aliases expand the document to more than" in message
    assert "x, x" not in message


def test_a_few_aliases_are_still_accepted(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(SMOKE.read_text().replace("per_device_train_batch_size: 16, learning_rate",
                                              "per_device_train_batch_size: &bs 16, learning_rate")
                    .replace("per_device_eval_batch_size: 64", "per_device_eval_batch_size: *bs"))
    assert load_recipe(str(path)).training.per_device_eval_batch_size == 16


def test_duplicate_keys_are_refused_naming_key_and_lines(tmp_path):
    text = SMOKE.read_text().replace("  max_length: 32\n", "  max_length: 32\n  max_length: 64\n")
    message = _load_text(tmp_path, text)
    assert "duplicate key 'max_length' (first written at line" in message
    line = next(i for i, t in enumerate(text.splitlines(), 1) if t == "  max_length: 64")
    assert f"at line {line}, column 3" in message


def test_a_second_auto_distillation_block_is_a_duplicate_key(tmp_path):
    text = SMOKE.read_text() + "auto_distillation:\n  search: {search_space: {hidden_size: [64]}}\n"
    message = _load_text(tmp_path, text)
    assert "duplicate key 'auto_distillation'" in message
    assert "required" not in message  # not blamed on missing sections


def test_deep_nesting_gives_a_clear_error_not_a_recursion_error(tmp_path):
    text = SMOKE.read_text().replace("model:\n  name: smoke\n", "model:\n  name: " + "[" * 5000 + "]" * 5000 + "\n")
    message = _load_text(tmp_path, text)
    assert f"nesting deeper than {MAX_DEPTH} levels" in message


def test_a_mapping_where_the_search_space_wants_a_list_is_refused():
    rejects(mutated("auto_distillation.search.search_space.hidden_size", {"64": 1, "96": 2}),
            "'search.search_space.hidden_size' must be a list of values, got {'64': 1, '96': 2} (dict); "
            "write hidden_size: [value, ...].")


def test_huge_values_are_shortened_in_messages():
    message = rejects(mutated("model.name", list(range(100000))), "model.name must be str, got [0, 1, 2")
    assert "99999" not in message


# ------------------------------------------------------------------------------------------------- paths, overrides


def test_a_directory_given_as_the_recipe_says_so(tmp_path):
    with pytest.raises(ConfigError, match="is a directory; give the path of a YAML recipe file"):
        load_recipe(str(tmp_path))


def test_a_directory_given_as_a_data_file_says_so(tmp_path):
    recipe = smoke()
    recipe["data"].update(dataset_name=None, train_file=str(tmp_path))
    rejects(recipe, f"data.train_file '{tmp_path}' is a directory; give the path of a local csv or json file.")


@pytest.mark.parametrize("args", [["--output_dir="], ["--output_dir", ""], ["--learning_rate=  "]])
def test_empty_override_is_refused(args):
    with pytest.raises(ConfigError, match=r"is given an empty value"):
        load_recipe(str(SMOKE), args)


# ------------------------------------------------------------------------------------------------- metric scripts


def _metric_script(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "metric-code-ran"
    folder = tmp_path / "my_metric"
    folder.mkdir()
    (folder / "my_metric.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    return folder, marker


def test_a_local_metric_script_needs_consent_and_is_never_imported_at_validation(tmp_path):
    folder, marker = _metric_script(tmp_path)
    rejects(mutated("auto_distillation.evaluation.metrics", [str(folder)]),
            "imports and runs its code: set auto_distillation.evaluation.trust_remote_code: true to allow it.")
    assert not marker.exists()
    recipe = mutated("auto_distillation.evaluation.metrics", [str(folder)])
    recipe["auto_distillation"]["evaluation"]["trust_remote_code"] = True
    recipe["auto_distillation"]["search"]["metrics"] = ["latency", "params"]
    recipe["auto_distillation"]["search"]["higher_is_better"] = [False, False]
    assert build_recipe(recipe).evaluation.trust_remote_code is True
    assert not marker.exists()  # consent given, but validation still runs nothing


def test_a_hub_metric_needs_consent():
    rejects(mutated("auto_distillation.evaluation.metrics", ["matthews_correlation"]),
            "'matthews_correlation' is not a shipped metric (accuracy, f1, mlm_accuracy); loading the Hub metric "
            "imports and runs its code")


def test_load_metric_refuses_a_script_without_consent(tmp_path):
    from autodistill_trainer.metrics import build_compute_metrics, load_metric

    folder, marker = _metric_script(tmp_path)
    with pytest.raises(ConfigError, match="pass trust_remote_code"):
        load_metric(str(folder))
    with pytest.raises(ConfigError, match="pass trust_remote_code"):
        build_compute_metrics(["accuracy", str(folder)])
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------- through the CLI

CLI_CASES = [
    ("learning_rate: 1.0e-3", "learning_rate: .inf", "error: auto_distillation.train.learning_rate is not a finite"),
    ("  max_length: 32\n", "  max_length: 32\n  max_length: 1\n", "error: recipe "),
    ("latency_warmup: 2", "latency_warmup: -5", "error: auto_distillation.evaluation.latency_warmup must be"),
]


@pytest.mark.parametrize("old,new,expected", CLI_CASES, ids=["inf", "duplicate", "warmup"])
def test_cli_exits_2_with_one_error_line(tmp_path, capsys, old, new, expected):
    path = tmp_path / "r.yaml"
    path.write_text(SMOKE.read_text().replace(old, new))
    rc = run_autodistill.main([str(path), "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith(expected) and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_cli_refuses_an_empty_output_dir_override(tmp_path, capsys):
    assert run_autodistill.main([str(SMOKE), "--output_dir="]) == 2
    err = capsys.readouterr().err
    assert err == "error: --output_dir is given an empty value; give one (e.g. --output_dir VALUE) or leave it out.\n"


def test_recipe_is_not_modified_by_validation():
    recipe = smoke()
    before = copy.deepcopy(recipe)
    build_recipe(recipe)
    assert recipe == before
