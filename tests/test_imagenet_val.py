"""Sorting ImageNet's flat validation folder into class folders, from a fake devkit whose
ILSVRC2012 ids are not in sorted-wnid order (as the real one), or from LOC_val_solution.csv."""
import tarfile

import numpy as np
import pytest

from focalnet_jax.data import imagenet_val

WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361"]  # sorted
ID_ORDER = [3, 1, 4, 2]  # ILSVRC2012_ID of each sorted wnid: a permutation, as in meta.mat
TRUTH = [4, 4, 1, 3, 2, 1, 3]  # ground truth ids of images 1..7


def fake_devkit(root):
  from scipy.io import savemat

  data = root / "ILSVRC2012_devkit_t12" / "data"
  data.mkdir(parents=True)
  synsets = np.zeros(len(WNIDS) + 1, dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("num_children", "O")])
  for k, (wnid, i) in enumerate(zip(WNIDS, ID_ORDER)):
    synsets[k] = (i, wnid, 0)
  synsets[-1] = (1001, "n00001740", 3)  # a non-leaf synset, as meta.mat lists after the 1000
  savemat(str(data / "meta.mat"), {"synsets": synsets})
  (data / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{i}\n" for i in TRUTH))
  return root / "ILSVRC2012_devkit_t12"


def flat_val(root):
  val = root / "val"
  val.mkdir()
  for n in range(1, len(TRUTH) + 1):
    (val / f"ILSVRC2012_val_{n:08d}.JPEG").write_bytes(bytes([n]))
  return val


def expected():
  wnid_of = {i: w for w, i in zip(WNIDS, ID_ORDER)}
  return {f"ILSVRC2012_val_{n:08d}.JPEG": wnid_of[i] for n, i in enumerate(TRUTH, start=1)}


@pytest.mark.parametrize("packed", [False, True])
def test_devkit_ids_go_through_meta_mat(tmp_path, packed):
  devkit = fake_devkit(tmp_path)
  if packed:
    with tarfile.open(tmp_path / "devkit.tar.gz", "w:gz") as tar:
      tar.add(devkit, arcname="ILSVRC2012_devkit_t12")
    devkit = tmp_path / "devkit.tar.gz"
  val = flat_val(tmp_path)
  imagenet_val.main(["--val_dir", str(val), "--devkit", str(devkit)])
  for name, wnid in expected().items():
    assert (val / wnid / name).read_bytes() == bytes([int(name[15:23])])
  assert sorted(p.name for p in val.iterdir()) == sorted(set(expected().values()))


def test_solution_csv_and_copy(tmp_path):
  val = flat_val(tmp_path)
  rows = "".join(f"{name[:-5]},{wnid} 1 2 3 4 {wnid} 5 6 7 8\n" for name, wnid in expected().items())
  (tmp_path / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + rows)
  counts = imagenet_val.sort_val(str(val), str(tmp_path / "sorted"),
                                 imagenet_val.labels_from_solution(str(tmp_path / "LOC_val_solution.csv")), "copy")
  assert sum(counts.values()) == len(TRUTH) and len(list(val.iterdir())) == len(TRUTH)  # copies leave the originals
  for name, wnid in expected().items():
    assert (tmp_path / "sorted" / wnid / name).is_file()


def test_a_wrong_label_file_moves_nothing(tmp_path):
  val = flat_val(tmp_path)
  with pytest.raises(ValueError, match="7 images have no label"):
    imagenet_val.sort_val(str(val), str(val), {"ILSVRC2012_val_99999999": "n01440764"})
  assert len(list(val.iterdir())) == len(TRUTH)
