"""--help: every option's first sentence, whole, and the parameters a regularizer, model or
optimizer takes, with their defaults as they are typed on the command line."""

from __future__ import annotations

from regbench.cli.hydra_hooks import first_sentence, option_groups_text


def test_a_description_is_not_cut_inside_parentheses(tmp_path):
    path = tmp_path / "focal.yaml"
    path.write_text("# Focal loss (Lin et al. 2017; Mukhoti et al. 2020): more. Second sentence.\n")
    assert first_sentence(path) == "Focal loss (Lin et al. 2017; Mukhoti et al. 2020)"


def test_help_shows_each_options_parameters_with_their_defaults():
    after: dict[str, str] = {}  # option -> its parameter lines, joined
    option = ""
    for line in option_groups_text().splitlines():
        if line.startswith("  ") and not line.startswith("   "):
            option = line.split()[0]
            after[option] = ""
        elif line.startswith("   ") and option:
            after[option] = f"{after[option]} {line.strip()}".strip()
    assert after["regularizer=label_smoothing"] == "epsilon=0.1"
    assert after["regularizer=logit_norm"].startswith("tau=")
    assert "p=0.5" in after["regularizer=dropout"] and "placement=after_bn" in after["regularizer=dropout"]
    assert after["model=mlp"] == "hidden_sizes=[1024,1024]"
    assert "momentum=0.9" in after["optimizer=sgd"] and "nesterov=false" in after["optimizer=sgd"]
    assert after["regularizer=none"] == ""
