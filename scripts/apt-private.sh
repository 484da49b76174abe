# Downloads single Debian packages from a suite the system's apt sources do
# not list (sid, bookworm-backports…), without touching those sources: apt
# runs with a private sources list, state and cache. Source it; do not run it.

# apt_private_setup DIR "deb [signed-by=…] MIRROR SUITE main" — sets
# APT_PRIVATE_OPTS (an array of apt options) for that private configuration.
apt_private_setup() {
  local dir="$1" line="$2"
  mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial" "$dir/etc"
  printf '%s\n' "$line" > "$dir/etc/sources.list"
  APT_PRIVATE_OPTS=(
    -q
    -o "Dir::Etc::SourceList=$dir/etc/sources.list"
    -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::State::Lists=$dir/lists"
    -o "Dir::Cache=$dir/cache"
    -o "Dir::State::status=/dev/null"
    -o "APT::Architecture=amd64"
    -o "APT::Architectures::=amd64"
    -o "APT::Sandbox::User=$(id -un)"
    -o "Acquire::Languages=none"
    -o "Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled=false"
    -o "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false"
    -o "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false"
    -o "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false"
    -o "Acquire::IndexTargets::deb::DEP-11-icons-hidpi::DefaultEnabled=false"
  )
}

# apt_private_version PACKAGE — the candidate version in the private lists.
apt_private_version() {
  apt-cache "${APT_PRIVATE_OPTS[@]}" show --no-all-versions "$1" 2>/dev/null | awk -F': ' '/^Version:/{print $2; exit}'
}
