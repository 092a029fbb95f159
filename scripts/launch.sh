#!/usr/bin/env bash
# ringtune multi-host launcher: one coordinator and one `node join` per slot on
# every host, over ssh. See scripts/LAUNCH.md for the full guide.
#
#   scripts/launch.sh --hostfile hosts.txt --config cluster.yaml [options]
#   scripts/launch.sh --hosts gpu1,gpu2:4 --config cluster.yaml
#   scripts/launch.sh --stop [--state-file F]
#
# Hosts:
#   --hostfile FILE          lines "host [slots]" (default 1 slot; "slots=N"
#                            also accepted); '#' starts a comment
#   --hosts a,b:2,c          the same inline; ":N" gives the slot count
#   --gpus-per-host N        slots for hosts that do not name a count
#   --cpu                    nodes use --device cpu instead of cuda:<slot>
# Coordinator:
#   --config FILE            cluster.yaml (a path on the coordinator's host)
#   --coordinator-host H     run the coordinator on H over ssh (default: here)
#   --coordinator-addr A:P   address nodes join; the coordinator binds it
#                            (default: H's address, port 7946)
#   --label L                cluster label for the nodes (default: read from
#                            --config's cluster.label, else the binaries')
# Nodes:
#   --node-port P            gossip port of slot 0; slot i uses P+i (default
#                            7950; 0 lets every node pick a free port)
#   --key-file F             cluster key (default: a fresh key for this run)
# ssh:
#   --bin-dir DIR            where coordinator and node live on the hosts
#                            (default: found on the remote PATH)
#   --ssh-opts "OPTS"        extra ssh options, e.g. "-F ./ssh_config -i k"
#   --ssh-port P             ssh port
#   --connect-timeout S      per-host reachability check timeout (default 5)
# Run:
#   --log-dir DIR            per-process logs (default logs/launch-<time>)
#   --state-file F           where --stop finds this launch
#                            (default ~/.ringtune/launch.state)
#   --grace S                seconds between TERM and KILL (default 30)
#   --coordinator-args "A"   extra arguments for the coordinator
#   --node-args "A"          extra arguments for every node
#   --dry-run                print what would run, start nothing
#   --stop                   stop the launch recorded in the state file
#
# The cluster key never appears on a command line, in the environment or in a
# world-readable file: it is streamed over each ssh connection's stdin into a
# 0600 file in a 0700 temp dir on the host, removed when the process ends. That
# stdin also acts as a dead man's switch: when this script dies, however it
# dies, the connection closes and the host stops its process group.
#
# Exit status: the coordinator's; 2 for bad arguments or a failed preflight;
# 130 when interrupted.
set -uo pipefail

prog=launch.sh
die() { echo "$prog: error: $*" >&2; exit 2; }
say() { echo "$prog: $*" >&2; }

# --- arguments ---------------------------------------------------------------
hostfile= hosts_arg= gpus_per_host=1 cpu=0 config= coord_host= coord_addr=
label= node_port=7950 key_file= bin_dir= ssh_opts= ssh_port= connect_timeout=5
log_dir= state_file=${HOME:-/tmp}/.ringtune/launch.state grace=30
coord_args= node_args= dry_run=0 stop=0

need() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value (see $prog --help)"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --hostfile) need "$@"; hostfile=$2; shift ;;
    --hosts) need "$@"; hosts_arg=$2; shift ;;
    --gpus-per-host) need "$@"; gpus_per_host=$2; shift ;;
    --cpu) cpu=1 ;;
    --config) need "$@"; config=$2; shift ;;
    --coordinator-host) need "$@"; coord_host=$2; shift ;;
    --coordinator-addr) need "$@"; coord_addr=$2; shift ;;
    --label) need "$@"; label=$2; shift ;;
    --node-port) need "$@"; node_port=$2; shift ;;
    --key-file) need "$@"; key_file=$2; shift ;;
    --bin-dir) need "$@"; bin_dir=$2; shift ;;
    --ssh-opts) need "$@"; ssh_opts=$2; shift ;;
    --ssh-port) need "$@"; ssh_port=$2; shift ;;
    --connect-timeout) need "$@"; connect_timeout=$2; shift ;;
    --log-dir) need "$@"; log_dir=$2; shift ;;
    --state-file) need "$@"; state_file=$2; shift ;;
    --grace) need "$@"; grace=$2; shift ;;
    --coordinator-args) need "$@"; coord_args=$2; shift ;;
    --node-args) need "$@"; node_args=$2; shift ;;
    --dry-run) dry_run=1 ;;
    --stop) stop=1 ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option '$1' (see $prog --help)" ;;
  esac
  shift
done

isnum() { case "$1" in ''|*[!0-9]*) return 1 ;; esac; }
for v in "$gpus_per_host --gpus-per-host" "$node_port --node-port" "$connect_timeout --connect-timeout" "$grace --grace"; do
  isnum "${v% *}" || die "${v#* } must be a whole number, got '${v% *}'"
done
[ -z "$ssh_port" ] || isnum "$ssh_port" || die "--ssh-port must be a port number, got '$ssh_port'"

# ssh command line shared by every connection. BatchMode: never prompt (a
# prompt would hang a launch of 100 hosts); the user's agent or keys must work.
read -r -a ssh_extra <<<"$ssh_opts"
ssh_cmd=(ssh -o BatchMode=yes -o ServerAliveInterval=15 -o ServerAliveCountMax=4 "${ssh_extra[@]}")
[ -z "$ssh_port" ] || ssh_cmd+=(-p "$ssh_port")

# --- stop --------------------------------------------------------------------
# The state file holds "launcher PID" and one "proc TAG HOST PGID" line per
# started process (HOST "-" for this machine), plus the ssh options to reach
# the hosts again.
alive() { kill -0 "$1" 2>/dev/null; }
if [ "$stop" = 1 ]; then
  [ -f "$state_file" ] || die "no running launch: state file $state_file does not exist (pass the launch's --state-file)"
  launcher= run_dir= ; procs=()
  while read -r kind rest; do
    case "$kind" in
      launcher) launcher=$rest ;;
      rundir) run_dir=$rest ;;
      ssh) eval "ssh_cmd=($rest)" ;; # written with printf %q by the launch
      proc) procs+=("$rest") ;;
    esac
  done <"$state_file"
  # Preferred path: the launcher stops everything it started, in order.
  if [ -n "$launcher" ] && alive "$launcher"; then
    say "stopping launch (launcher pid $launcher)"
    kill -TERM "$launcher"
    for ((i = 0; i < (grace + 15) * 10; i++)); do alive "$launcher" || break; sleep 0.1; done
  fi
  # Fallback for a launcher that is gone (kill -9, a lost terminal): signal
  # every recorded process group directly.
  rc=0
  for p in "${procs[@]}"; do
    read -r tag host pgid <<<"$p"
    stopper="kill -0 -- -$pgid 2>/dev/null || exit 0; kill -TERM -- -$pgid; for i in \$(seq $((grace * 10))); do kill -0 -- -$pgid 2>/dev/null || exit 0; sleep 0.1; done; kill -KILL -- -$pgid"
    if [ "$host" = - ]; then
      bash -c "$stopper" || rc=1
    else
      "${ssh_cmd[@]}" -o ConnectTimeout="$connect_timeout" "$host" "$stopper" </dev/null || { say "$tag: could not stop process group $pgid on $host"; rc=1; }
    fi
  done
  if [ -n "$launcher" ] && alive "$launcher"; then
    say "launcher pid $launcher still running; killing it"
    kill -KILL "$launcher" 2>/dev/null
  fi
  # The launcher's private dir (fifos, preflight output) if it could not
  # remove it itself.
  case "$run_dir" in */ringtune-launch.*) rm -rf "$run_dir" ;; esac
  rm -f "$state_file"
  say "stopped"
  exit $rc
fi

# --- hosts -------------------------------------------------------------------
hosts=() slots=()
add_host() { # NAME [SLOTS] SOURCE
  local h=$1 n=${2:-$gpus_per_host} src=$3 x
  n=${n#slots=}
  isnum "$n" && [ "$n" -gt 0 ] || die "$src: slot count for host '$h' must be a positive number, got '$n'"
  case "$h" in -*|*[!A-Za-z0-9._@:-]*) die "$src: '$h' is not a host name" ;; esac
  for x in "${hosts[@]}"; do [ "$x" != "$h" ] || die "$src: host '$h' is listed twice"; done
  hosts+=("$h"); slots+=("$n")
}
[ -n "$hostfile" ] || [ -n "$hosts_arg" ] || die "no hosts: pass --hostfile FILE or --hosts a,b,c"
[ -z "$hostfile" ] || [ -z "$hosts_arg" ] || die "pass --hostfile or --hosts, not both"
if [ -n "$hostfile" ]; then
  [ -r "$hostfile" ] || die "hostfile $hostfile cannot be read"
  lineno=0
  while IFS= read -r line || [ -n "$line" ]; do
    lineno=$((lineno + 1))
    line=${line%%#*}
    read -r -a f <<<"$line"
    [ ${#f[@]} -gt 0 ] || continue
    [ ${#f[@]} -le 2 ] || die "$hostfile:$lineno: expected 'host [slots]', got '$line'"
    add_host "${f[0]}" "${f[1]:-}" "$hostfile:$lineno"
  done <"$hostfile"
else
  IFS=, read -r -a f <<<"$hosts_arg"
  for x in "${f[@]}"; do
    [ -n "$x" ] || continue
    case "$x" in *:*) add_host "${x%%:*}" "${x##*:}" --hosts ;; *) add_host "$x" "" --hosts ;; esac
  done
fi
[ ${#hosts[@]} -gt 0 ] || die "${hostfile:---hosts} names no hosts"
[ -n "$config" ] || die "--config is required (the cluster.yaml the coordinator runs with)"
if [ -z "$coord_host" ] && [ ! -r "$config" ]; then
  die "config $config cannot be read"
fi

# The address a host is reached at: what ssh itself would connect to (an
# ssh_config HostName alias is honoured), resolved to IPv4 when it is a name,
# because the nodes bind their gossip listener to it.
host_addr() {
  local name ip
  name=$("${ssh_cmd[@]}" -G "$1" 2>/dev/null | awk '$1 == "hostname" { print $2; exit }')
  name=${name:-$1}
  ip=$(getent ahostsv4 "$name" 2>/dev/null | awk '{ print $1; exit }')
  echo "${ip:-$name}"
}
if [ -z "$coord_addr" ]; then
  if [ -n "$coord_host" ]; then
    coord_addr=$(host_addr "$coord_host"):7946
  else
    ip=$(hostname -I 2>/dev/null | awk '{ print $1 }')
    [ -n "$ip" ] || die "cannot find this machine's address; pass --coordinator-addr IP:PORT"
    coord_addr=$ip:7946
  fi
fi
case "$coord_addr" in *:*) ;; *) coord_addr=$coord_addr:7946 ;; esac

# Label: the nodes must present the coordinator's cluster.label. Read it from
# a local config (top-level "cluster:" block, key "label:").
if [ -z "$label" ] && [ -r "$config" ]; then
  label=$(awk '
    /^[^ \t#]/ { in_cluster = ($1 == "cluster:") ; next }
    in_cluster && $1 == "label:" { v = $2; gsub(/^["'\'']|["'\'']$/, "", v); print v; exit }
  ' "$config")
fi

# --- commands ------------------------------------------------------------------
bin() { if [ -n "$bin_dir" ]; then echo "${bin_dir%/}/$1"; else echo "$1"; fi; }
read -r -a coord_extra <<<"$coord_args"
read -r -a node_extra <<<"$node_args"
# @KEYFILE@ is replaced on the host by the private key file's path.
coord_argv=("$(bin coordinator)" --config "$config" --cluster.key_file @KEYFILE@ --cluster.bind "$coord_addr" "${coord_extra[@]}")
node_argv() { # HOST SLOT
  local dev=cuda:$2 port=0
  [ "$cpu" = 0 ] || dev=cpu
  [ "$node_port" = 0 ] || port=$((node_port + $2))
  local a=("$(bin node)" join --coordinator "$coord_addr" --key-file @KEYFILE@ --device "$dev"
    --bind "$(host_addr "$1"):$port" --name "$1-$2")
  [ -z "$label" ] || a+=(--label "$label")
  printf '%s\0' "${a[@]}" "${node_extra[@]}"
}

# The wrapper runs on each host (bash -c, arguments: grace, command...). It
# writes the key from stdin to a private file, starts the command in its own
# session (so one signal reaches its whole process group), reports the pid,
# and stops the group with TERM, then KILL after the grace period, when it is
# signalled or when its stdin closes (the launcher is gone).
# shellcheck disable=SC2016
wrapper='
set -u
grace=$1; shift
umask 077
d=$(mktemp -d "${TMPDIR:-/tmp}/ringtune-key.XXXXXXXX") || { echo "ringtune-launch: cannot create a private directory in ${TMPDIR:-/tmp} on $HOSTNAME"; exit 97; }
trap "rm -rf \"\$d\"" EXIT
IFS= read -r key || { echo "ringtune-launch: no cluster key on stdin"; exit 98; }
printf "%s\n" "$key" >"$d/cluster.key"; unset key
args=(); for a; do args+=("${a//@KEYFILE@/$d/cluster.key}"); done
exec 3<&0 </dev/null
setsid "${args[@]}" 3<&- &
pid=$!
echo "@@ringtune-launch pid=$pid"
( while IFS= read -r _; do :; done <&3; kill -TERM $$ 2>/dev/null ) &
watch=$!
exec 3<&-
stopping=0
trap "stopping=1" TERM INT HUP
while :; do
  wait "$pid"; rc=$?
  kill -0 "$pid" 2>/dev/null || break
  kill -TERM -- "-$pid" 2>/dev/null
  for ((i = 0; i < grace * 10; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$pid" 2>/dev/null
done
kill -KILL -- "-$pid" 2>/dev/null
kill "$watch" 2>/dev/null
exit $rc
'

q() { printf '%q ' "$@"; }
# remote_cmd ARGV...: the command string ssh hands to the host's login shell.
# The wrapper travels base64-encoded so that any POSIX login shell (not only
# bash, which understands the $'...' quoting of newlines) runs it unchanged.
wrapper_b64=$(printf '%s' "$wrapper" | base64 -w0)
remote_cmd() { printf 'exec bash -c "$(echo %s | base64 -d)" ringtune-launch %q ' "$wrapper_b64" "$grace"; q "$@"; }

if [ "$dry_run" = 1 ]; then
  echo "# cluster key: streamed on stdin into a 0600 file; @KEYFILE@ is its path"
  if [ -n "$coord_host" ]; then
    echo "$(q "${ssh_cmd[@]}" "$coord_host")$(q "${coord_argv[@]}")"
  else
    echo "$(q "${coord_argv[@]}")"
  fi
  for i in "${!hosts[@]}"; do
    for ((s = 0; s < slots[i]; s++)); do
      mapfile -d '' -t a < <(node_argv "${hosts[i]}" "$s")
      echo "$(q "${ssh_cmd[@]}" "${hosts[i]}")$(q "${a[@]}")"
    done
  done
  exit 0
fi

# --- preflight -------------------------------------------------------------------
# Every host is checked in parallel before anything starts, so a typo in host
# 97 of 100 does not leave 96 nodes waiting for a coordinator. Each check
# connects once: is the host reachable, and are the binary and the tools the
# wrapper needs there?
mkdir -p "$(dirname "$state_file")" || die "cannot create $(dirname "$state_file") for the state file"
if [ -f "$state_file" ]; then
  old=$(awk '$1 == "launcher" { print $2 }' "$state_file")
  if [ -n "$old" ] && alive "$old"; then
    die "a launch is already running (launcher pid $old, state file $state_file); stop it with '$prog --stop' or pass another --state-file"
  fi
fi
run_dir=$(umask 077 && mktemp -d "${TMPDIR:-/tmp}/ringtune-launch.XXXXXXXX") || die "cannot create a private temp dir"

check_host() { # HOST BINARY [CONFIG]
  local h=$1 b=$2 c=${3:-} out rc
  local script="for t in bash setsid mktemp base64; do command -v \$t >/dev/null || { echo \"missing tool: \$t\"; exit 3; }; done
command -v $(printf %q "$b") >/dev/null || { echo \"missing binary: $(printf %q "$b") (not found on \$PATH=\$PATH; set --bin-dir)\"; exit 3; }"
  [ -z "$c" ] || script+="
test -r $(printf %q "$c") || { echo \"missing config: $(printf %q "$c")\"; exit 3; }"
  out=$("${ssh_cmd[@]}" -o ConnectTimeout="$connect_timeout" "$h" "$script" </dev/null 2>&1)
  rc=$?
  if [ $rc = 255 ]; then
    echo "host $h: cannot connect over ssh within ${connect_timeout}s: $(tail -n1 <<<"$out")"
  elif [ $rc != 0 ]; then
    echo "host $h: $(tail -n1 <<<"$out")"
  fi
}
checks=()
for i in "${!hosts[@]}"; do
  check_host "${hosts[i]}" "$(bin node)" >"$run_dir/check.$i" &
  checks+=($!)
done
if [ -n "$coord_host" ]; then
  check_host "$coord_host" "$(bin coordinator)" "$config" >"$run_dir/check.coord" &
  checks+=($!)
else
  command -v "$(bin coordinator)" >/dev/null || echo "this machine: missing binary: $(bin coordinator) (set --bin-dir)" >"$run_dir/check.coord"
fi
wait "${checks[@]}"
failed=$(cat "$run_dir"/check.* 2>/dev/null)
if [ -n "$failed" ]; then
  rm -rf "$run_dir"
  echo "$prog: error: preflight failed, nothing was started:" >&2
  sed 's/^/  /' <<<"$failed" >&2
  exit 2
fi

# --- key -------------------------------------------------------------------------
if [ -n "$key_file" ]; then
  [ -r "$key_file" ] || { rm -rf "$run_dir"; die "key file $key_file cannot be read"; }
  IFS= read -r key <"$key_file"
  case "$(stat -c %a "$key_file")" in *00) ;; *) say "warning: key file $key_file is readable by others (chmod 600 it)" ;; esac
else
  # 32 random bytes, base64 on one line: the format of auth.WriteKeyFile.
  key=$(head -c 32 /dev/urandom | base64 -w0)
fi
[ -n "$key" ] || { rm -rf "$run_dir"; die "key file $key_file is empty"; }

# --- start ------------------------------------------------------------------------
log_dir=${log_dir:-logs/launch-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$log_dir" || die "cannot create log dir $log_dir"
{
  echo "launcher $$"
  echo "rundir $run_dir"
  echo "ssh $(q "${ssh_cmd[@]}")"
} >"$state_file"

fds=() pids=() tags=() coord_pid=
# stream TAG HOST LOG: prefix every line with TAG, copy it to LOG, and record
# the wrapper's pid report in the state file.
stream() {
  local tag=$1 host=$2 log=$3 line
  while IFS= read -r line || [ -n "$line" ]; do
    case "$line" in
      "@@ringtune-launch pid="*) echo "proc $tag $host ${line#*pid=}" >>"$state_file"; continue ;;
    esac
    printf '%s| %s\n' "$tag" "$line"
    printf '%s\n' "$line" >>"$log"
  done
}
# start TAG HOST ARGV...: HOST "-" runs the wrapper here, else over ssh.
start() {
  local tag=$1 host=$2 fifo=$run_dir/in.${#pids[@]} fd
  shift 2
  mkfifo -m 600 "$fifo"
  (
    # Close the other processes' key pipes: a child holding one open would
    # keep that host's dead man's switch from firing.
    for fd in "${fds[@]}"; do eval "exec $fd>&-"; done
    trap '' INT # Ctrl-C is handled by the launcher, which closes the pipes
    if [ "$host" = - ]; then
      # Its own session, like a wrapper under sshd: a signal to the
      # launcher's process group (a closed terminal, kill -9 of the job)
      # must not take the wrapper down before it has stopped its command.
      setsid bash -c "$wrapper" ringtune-launch "$grace" "$@" <"$fifo" 2>&1 | stream "$tag" "$host" "$log_dir/$tag.log"
      exit "${PIPESTATUS[0]}"
    fi
    "${ssh_cmd[@]}" "$host" "$(remote_cmd "$@")" <"$fifo" 2>&1 | stream "$tag" "$host" "$log_dir/$tag.log"
    exit "${PIPESTATUS[0]}"
  ) &
  pids+=($!) tags+=("$tag")
  exec {fd}>"$fifo"
  printf '%s\n' "$key" >&"$fd"
  fds+=("$fd")
  rm -f "$fifo"
}

stopping=0
shutdown() { # close every key pipe: each host stops its process group
  stopping=1
  local fd
  for fd in "${fds[@]}"; do eval "exec $fd>&-"; done
  fds=()
}
on_signal() {
  [ "$stopping" = 1 ] && return
  say "interrupted: stopping every process (TERM, KILL after ${grace}s)"
  shutdown
  interrupted=1
}
interrupted=0
trap on_signal INT TERM HUP

if [ -n "$coord_host" ]; then
  start coordinator "$coord_host" "${coord_argv[@]}"
else
  start coordinator - "${coord_argv[@]}"
fi
coord_pid=${pids[0]}
n=0
for i in "${!hosts[@]}"; do
  for ((s = 0; s < slots[i]; s++)); do
    mapfile -d '' -t a < <(node_argv "${hosts[i]}" "$s")
    start "${hosts[i]}:$s" "${hosts[i]}" "${a[@]}"
    n=$((n + 1))
  done
done
say "started coordinator and $n node(s) (coordinator $coord_addr); logs in $log_dir"

# --- wait ------------------------------------------------------------------------
# The run ends when the coordinator does; nodes then get the grace period to
# leave by themselves before their pipes are closed.
rc= deadline=
declare -A done_=()
while :; do
  remaining=0
  for j in "${!pids[@]}"; do
    [ -z "${done_[$j]:-}" ] || continue
    if alive "${pids[j]}"; then remaining=$((remaining + 1)); continue; fi
    wait "${pids[j]}"; r=$?
    done_[$j]=$r
    if [ "$j" = 0 ]; then
      rc=$r
      say "coordinator exited with status $r"
      deadline=$((SECONDS + grace))
    elif [ "$r" != 0 ] && [ "$stopping" = 0 ]; then
      say "${tags[j]}: node exited with status $r"
    fi
  done
  [ "$remaining" -gt 0 ] || break
  if [ -n "$deadline" ] && [ "$stopping" = 0 ] && [ "$SECONDS" -ge "$deadline" ]; then
    say "nodes still running ${grace}s after the coordinator ended: stopping them"
    shutdown
  fi
  sleep 0.2
done
rm -rf "$run_dir"
rm -f "$state_file"
[ "$interrupted" = 0 ] || exit 130
exit "${rc:-1}"
