# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_kvs_global_optspecs
    string join \n h/help V/version
end

function __fish_kvs_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_kvs_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_kvs_using_subcommand
    set -l cmd (__fish_kvs_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c kvs -n "__fish_kvs_needs_command" -s h -l help -d 'Print help'
complete -c kvs -n "__fish_kvs_needs_command" -s V -l version -d 'Print version'
complete -c kvs -n "__fish_kvs_needs_command" -f -a "serve" -d 'Serve the store over HTTP until SIGTERM or SIGINT, then save it and exit'
complete -c kvs -n "__fish_kvs_needs_command" -f -a "get" -d 'Print the value stored under KEY'
complete -c kvs -n "__fish_kvs_needs_command" -f -a "dump" -d 'Print every pair, sorted by key: a table on a terminal, JSON Lines otherwise'
complete -c kvs -n "__fish_kvs_needs_command" -f -a "restore" -d 'Replace (or with --merge, update) the data file from JSON Lines'
complete -c kvs -n "__fish_kvs_needs_command" -f -a "completions" -d 'Print a shell completion script to standard output'
complete -c kvs -n "__fish_kvs_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c kvs -n "__fish_kvs_using_subcommand serve" -l port -d 'TCP port to listen on (0 picks a free port, shown in the log) [default: 8001, or the port of --addr when that is given]' -r
complete -c kvs -n "__fish_kvs_using_subcommand serve" -l working-dir -d 'Directory holding the data file (snapshot.jsonl), the write-ahead log (wal.jsonl) or a cluster member\'s Raft log (raft-log.jsonl), and LOCK' -r -F
complete -c kvs -n "__fish_kvs_using_subcommand serve" -l bind -d 'Address to listen on; 0.0.0.0 exposes the server to the network [default: 127.0.0.1, or the host of --addr when that is given]' -r
complete -c kvs -n "__fish_kvs_using_subcommand serve" -l shutdown-timeout -d 'How long shutdown waits for requests in flight before saving anyway (e.g. 15s, 500ms, 1m)' -r
complete -c kvs -n "__fish_kvs_using_subcommand serve" -l max-value-bytes -d 'Largest value accepted by PUT, in bytes; larger ones get 413' -r
complete -c kvs -n "__fish_kvs_using_subcommand serve" -l fsync -d 'When logged writes reach the disk: `always` fsyncs before each acknowledgement (concurrent writes share one fsync), so nothing acknowledged is lost even on power loss; `periodic` fsyncs at least once a second, surviving a crash of the process but losing up to a second of writes on power loss (single-node mode; a cluster member always fsyncs)' -r -f -a "always\t'Before acknowledging each write (group commit shares one fsync between all writes waiting at the time)'
periodic\t'At least once a second: survives a crash of the process, may lose up to a second of writes on power loss'"
complete -c kvs -n "__fish_kvs_using_subcommand serve" -l wal-max-bytes -d 'Fold the write-ahead log into the data file (a checkpoint) when it grows past this many bytes; in a cluster, snapshot the store and trim the Raft log (a compaction) when it does' -r
complete -c kvs -n "__fish_kvs_using_subcommand serve" -l peers -d 'The cluster\'s members, comma-separated HOST:PORT or :PORT (meaning 127.0.0.1:PORT); listing this member too is allowed. Empty or unset: a single node' -r
complete -c kvs -n "__fish_kvs_using_subcommand serve" -l addr -d 'This member\'s address and ID in the cluster, HOST:PORT, as the other members reach it [default: BIND:PORT]' -r
complete -c kvs -n "__fish_kvs_using_subcommand serve" -l commit-timeout -d 'How long a cluster write may wait to be committed on a majority (and a read to have leadership confirmed) before it is answered 503' -r
complete -c kvs -n "__fish_kvs_using_subcommand serve" -l token-file -d 'File holding the token that every request but GET or HEAD /health must carry as `Authorization: Bearer TOKEN` (surrounding whitespace trimmed; at least 32 visible ASCII characters; no access for group or others). Every member of a cluster uses the same one' -r -F
complete -c kvs -n "__fish_kvs_using_subcommand serve" -l tls-cert -d 'PEM certificate chain (leaf first) for the port to serve HTTPS only; needs --tls-key' -r -F
complete -c kvs -n "__fish_kvs_using_subcommand serve" -l tls-key -d 'PEM private key of --tls-cert' -r -F
complete -c kvs -n "__fish_kvs_using_subcommand serve" -l tls-ca -d 'PEM CA certificates that members verify each other\'s certificates against [default: the system\'s roots]' -r -F
complete -c kvs -n "__fish_kvs_using_subcommand serve" -l log-level -d 'How much the server logs to stderr' -r -f -a "error\t''
warn\t''
info\t''
debug\t''
trace\t''"
complete -c kvs -n "__fish_kvs_using_subcommand serve" -l insecure -d 'Serve on an address other than loopback without --token-file, which is otherwise refused (protected mode): anyone who can reach the port can then read, change and clear every key'
complete -c kvs -n "__fish_kvs_using_subcommand serve" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c kvs -n "__fish_kvs_using_subcommand serve" -s V -l version -d 'Print version'
complete -c kvs -n "__fish_kvs_using_subcommand get" -l working-dir -d 'Directory holding the data file (snapshot.jsonl), the write-ahead log (wal.jsonl) or a cluster member\'s Raft log (raft-log.jsonl), and LOCK' -r -F
complete -c kvs -n "__fish_kvs_using_subcommand get" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c kvs -n "__fish_kvs_using_subcommand get" -s V -l version -d 'Print version'
complete -c kvs -n "__fish_kvs_using_subcommand dump" -l working-dir -d 'Directory holding the data file (snapshot.jsonl), the write-ahead log (wal.jsonl) or a cluster member\'s Raft log (raft-log.jsonl), and LOCK' -r -F
complete -c kvs -n "__fish_kvs_using_subcommand dump" -l format -d 'Output format [default: table on a terminal, jsonl otherwise]' -r -f -a "table\t'A table with KEY and VALUE columns, long values shortened'
jsonl\t'One {"key":...,"value":...} object per line: the data-file format'"
complete -c kvs -n "__fish_kvs_using_subcommand dump" -l prefix -d 'Only pairs whose key starts with this prefix' -r
complete -c kvs -n "__fish_kvs_using_subcommand dump" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c kvs -n "__fish_kvs_using_subcommand dump" -s V -l version -d 'Print version'
complete -c kvs -n "__fish_kvs_using_subcommand restore" -l working-dir -d 'Directory holding the data file (snapshot.jsonl), the write-ahead log (wal.jsonl) or a cluster member\'s Raft log (raft-log.jsonl), and LOCK' -r -F
complete -c kvs -n "__fish_kvs_using_subcommand restore" -l max-value-bytes -d 'Largest value accepted, in bytes, as for `kvs serve`' -r
complete -c kvs -n "__fish_kvs_using_subcommand restore" -l force -d 'Replace a store that already holds data'
complete -c kvs -n "__fish_kvs_using_subcommand restore" -l merge -d 'Add the input to the existing pairs; input lines win over existing keys'
complete -c kvs -n "__fish_kvs_using_subcommand restore" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c kvs -n "__fish_kvs_using_subcommand restore" -s V -l version -d 'Print version'
complete -c kvs -n "__fish_kvs_using_subcommand completions" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c kvs -n "__fish_kvs_using_subcommand completions" -s V -l version -d 'Print version'
complete -c kvs -n "__fish_kvs_using_subcommand help; and not __fish_seen_subcommand_from serve get dump restore completions help" -f -a "serve" -d 'Serve the store over HTTP until SIGTERM or SIGINT, then save it and exit'
complete -c kvs -n "__fish_kvs_using_subcommand help; and not __fish_seen_subcommand_from serve get dump restore completions help" -f -a "get" -d 'Print the value stored under KEY'
complete -c kvs -n "__fish_kvs_using_subcommand help; and not __fish_seen_subcommand_from serve get dump restore completions help" -f -a "dump" -d 'Print every pair, sorted by key: a table on a terminal, JSON Lines otherwise'
complete -c kvs -n "__fish_kvs_using_subcommand help; and not __fish_seen_subcommand_from serve get dump restore completions help" -f -a "restore" -d 'Replace (or with --merge, update) the data file from JSON Lines'
complete -c kvs -n "__fish_kvs_using_subcommand help; and not __fish_seen_subcommand_from serve get dump restore completions help" -f -a "completions" -d 'Print a shell completion script to standard output'
complete -c kvs -n "__fish_kvs_using_subcommand help; and not __fish_seen_subcommand_from serve get dump restore completions help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
