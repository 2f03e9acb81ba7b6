#!/usr/bin/env bash
# Build a small example tree, send it through `rawsend send | rawsend receive`,
# verify the stream and compare the result with the source.
set -euo pipefail
work=$(mktemp -d "${TMPDIR:-/tmp}/rawsend-demo.XXXXXX")
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
src="$work/source"
mkdir -p "$src/docs/notes" "$src/logs" "$src/empty" "$src/readonly"
for i in $(seq 1 2000); do echo "line $i: the quick brown fox jumps over the lazy dog"; done > "$src/docs/fox.txt"
for i in $(seq 1 20000); do echo "2026-11-22T02:00:$((i % 60)) host app[$((i % 97))]: request $i took $((i % 13)) ms"; done > "$src/logs/app.log"
head -c 300000 /dev/urandom > "$src/random.bin"
truncate -s 64M "$src/sparse.img"; echo "data in the middle" | dd of="$src/sparse.img" bs=1 seek=$((32 << 20)) conv=notrunc status=none
echo "ünïcödé name" > "$src/docs/notes/héllo wörld.txt"
ln "$src/docs/fox.txt" "$src/docs/fox-hardlink.txt"
ln -s ../docs/fox.txt "$src/logs/link-to-fox"
ln -s /does/not/exist "$src/dangling"
echo "read only" > "$src/readonly/file"; chmod 555 "$src/readonly"
touch -d '2001-02-03 04:05:06.123456789' "$src/docs/fox.txt"

echo "== source tree: $src"
du -sh --apparent-size "$src" | sed 's/^/   apparent size: /'
echo "== rawsend send $src | rawsend receive $work/received"
rawsend send "$src" | rawsend receive "$work/received"
echo "== rawsend send -o stream.rs, then verify and dump"
rawsend send --no-progress -o "$work/stream.rs" "$src" 2>/dev/null
rawsend verify "$work/stream.rs"
rawsend dump "$work/stream.rs" | head -n 8
echo "   ..."
echo "== compare: contents, modes, times, links"
diff -r --no-dereference "$src" "$work/received" && echo "   contents and links identical"
(cd "$src" && find . -printf '%p %y %m %T@ %s %l\n' | sort) > "$work/a"
(cd "$work/received" && find . -printf '%p %y %m %T@ %s %l\n' | sort) > "$work/b"
cmp -s "$work/a" "$work/b" && echo "   types, modes, mtimes (ns), sizes identical"
echo "   sparse.img allocated: source $(du -k "$src/sparse.img" | cut -f1) KiB, received $(du -k "$work/received/sparse.img" | cut -f1) KiB"
echo "== encrypted backup to a store that never sees the key, then a restore with the key"
rawsend keygen -o "$work/backup.key"
rawsend send --no-progress --encrypt "$work/backup.key" "$src" 2>/dev/null | rawsend receive --store "$work/store"
rawsend ls "$work/store"
rawsend verify "$work/store"
if grep -rqa "fox-hardlink" "$work/store"; then echo "   a file name is visible in the store!"; exit 1; fi
echo "   no file name appears in the stored bytes"
rawsend send "$work/store" 2>/dev/null | rawsend receive --key-file "$work/backup.key" "$work/restored"
diff -r --no-dereference "$src" "$work/restored" && echo "   restored tree identical to the source"
echo "== demo OK"
