#!/usr/bin/env bash
# A small tour: a sample dataset and model in the default local store, in a
# couple of versions, mounted on /mnt/art (or $ARTFS_MOUNT) and looked at with
# ls and cat. Safe to re-run: existing versions and a live mount are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
ARTFS="$PWD/.venv/bin/artfs"
PY="$PWD/.venv/bin/python"
MNT="${ARTFS_MOUNT:-/mnt/art}"

say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

if ! "$ARTFS" show demo/dataset:v1 >/dev/null 2>&1; then
  echo "putting a sample dataset and model into the store..."
  # The same bytes on every run, so a re-run makes no new versions.
  mkdir -p "$work/dataset/train" "$work/dataset/test"
  printf 'A toy dataset: 2-D points and their class.\n' >"$work/dataset/README.txt"
  "$PY" - "$work/dataset" <<'EOF'
import sys
from pathlib import Path
root = Path(sys.argv[1])
for split, n in (("train", 200), ("test", 50)):
    rows = ["x,y,label"] + [f"{(i * 37) % 101 / 10:.1f},{(i * 53) % 97 / 10:.1f},{i % 3}" for i in range(n)]
    (root / split / "points.csv").write_text("\n".join(rows) + "\n")
EOF
  "$ARTFS" put "$work/dataset" -n demo/dataset -d "first cut" >/dev/null
  printf 'cleaned: duplicates removed\n' >"$work/dataset/CHANGES.txt"
  "$ARTFS" put "$work/dataset" -n demo/dataset -d "cleaned" -m '{"rows": 250}' >/dev/null

  mkdir -p "$work/model"
  "$PY" - "$work/model" <<'EOF'
import json
import sys
from pathlib import Path
import numpy as np
root = Path(sys.argv[1])
np.save(root / "weights.npy", np.linspace(-1, 1, 3 * 64, dtype=np.float32).reshape(3, 64))
(root / "config.json").write_text(json.dumps({"layers": [64, 3], "lr": 0.01}) + "\n")
EOF
  "$ARTFS" put "$work/model" -n demo/classifier -t model -a best >/dev/null
  printf '{"layers": [64, 3], "lr": 0.003}\n' >"$work/model/config.json"
  "$ARTFS" put "$work/model" -n demo/classifier -t model >/dev/null
fi

mkdir -p "$MNT"
if grep -qs " $MNT fuse.artfs " /proc/mounts && ls "$MNT" >/dev/null 2>&1; then
  echo "artfs is already mounted on $MNT"
else
  "$ARTFS" mount "$MNT"
fi

say "ls -l $MNT/demo"
ls -l "$MNT/demo"
say "ls -l $MNT/demo/dataset"
ls -l "$MNT/demo/dataset"
say "ls -lR $MNT/demo/dataset/latest/"
ls -lR "$MNT/demo/dataset/latest/"
say "cat $MNT/demo/dataset/latest/CHANGES.txt"
cat "$MNT/demo/dataset/latest/CHANGES.txt"
say "head -3 $MNT/demo/dataset/v0/train/points.csv"
head -3 "$MNT/demo/dataset/v0/train/points.csv"
say "ls -l $MNT/demo/classifier"
ls -l "$MNT/demo/classifier"
say "diff $MNT/demo/classifier/best/config.json $MNT/demo/classifier/latest/config.json"
diff "$MNT/demo/classifier/best/config.json" "$MNT/demo/classifier/latest/config.json" || true
say "python: np.load('$MNT/demo/classifier/latest/weights.npy', mmap_mode='r').shape"
"$PY" -c "import numpy as np; print(np.load('$MNT/demo/classifier/latest/weights.npy', mmap_mode='r').shape)"
if command -v getfattr >/dev/null; then
  say "getfattr -d $MNT/demo/dataset/v1"
  getfattr -d "$MNT/demo/dataset/v1"
fi

echo
echo "mounted on $MNT. To unmount: $ARTFS umount $MNT"
