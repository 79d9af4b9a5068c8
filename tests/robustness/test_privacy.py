"""Privacy: after a real search and promote on the phantom, no identifier is anywhere.

The phantom's headers carry invented names, IDs, birth dates, accession numbers,
institutions, addresses, phone numbers, UIDs and a private tag with an operator's
name. After a two-trial search (Ray, ``run_trial``, W&B offline) and a promote
(``run_final``), every file the tool wrote (the experiment folder with its W&B
offline runs, trial checkpoints, report, final model, predictions and metadata, what
stays local beside it in ``results/.local``, and the preprocessing cache) is searched
for those values, taken from the headers themselves. The W&B runs are also read back with the record reader, so a value
stored compressed or encoded would still be found in their config, history and
summary.
"""

from __future__ import annotations

import json

import pytest

from robustness.phi import phi_strings, scan_tree, search_and_promote
from search.tracking import offline_runs

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]


@pytest.fixture(scope="module")
def written(phantom_dir, tmp_path_factory):
    """(experiment folder, cache folder) after a search and a promote on the phantom."""
    root = tmp_path_factory.mktemp("privacy")
    return search_and_promote(phantom_dir, root)


def test_the_phantom_carries_identifiers_to_look_for(phantom_dir):
    phi = phi_strings(sorted((phantom_dir / "dicom").glob("*.dcm")))
    sources = set(phi.values())
    for keyword in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "InstitutionName",
        "AccessionNumber",
    ):
        assert keyword in sources
    assert any(s.startswith("private") for s in sources)
    assert len(phi) > 100


def test_nothing_written_holds_an_identifier(written, phantom_dir):
    experiment, cache = written
    phi = phi_strings(sorted((phantom_dir / "dicom").glob("*.dcm")))
    assert (experiment / "final" / "predictions.csv").is_file(), "the promote ran"
    assert list((experiment / "wandb").rglob("*.wandb")), "W&B wrote offline runs"
    local = experiment.parent / ".local"  # Ray's folders and W&B's logs: no header values
    scanned, hits = scan_tree([experiment, local, cache], phi, exclude=[phantom_dir])
    assert scanned > 20
    assert not hits, "\n".join(
        f"{h.file}: {h.value!r} ({h.source}) in ...{h.context}..." for h in hits[:20]
    )


def test_wandb_runs_read_back_hold_no_identifier_or_local_path(written, phantom_dir):
    experiment, cache = written
    phi = phi_strings(sorted((phantom_dir / "dicom").glob("*.dcm")))
    runs = offline_runs(experiment)
    assert len(runs) >= 3, "two trials, the search summary and the promote"
    for run in runs:
        text = json.dumps([run.config, run.history, run.summary], default=str)
        assert not [v for v in phi if len(v) >= 7 and v in text], run.name
        for folder in (phantom_dir, cache, experiment):
            assert str(folder) not in text, f"{run.name} names the local folder {folder}"
