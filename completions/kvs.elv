
use builtin;
use str;

set edit:completion:arg-completer[kvs] = {|@words|
    fn spaces {|n|
        builtin:repeat $n ' ' | str:join ''
    }
    fn cand {|text desc|
        edit:complex-candidate $text &display=$text' '(spaces (- 14 (wcswidth $text)))$desc
    }
    var command = 'kvs'
    for word $words[1..-1] {
        if (str:has-prefix $word '-') {
            break
        }
        set command = $command';'$word
    }
    var completions = [
        &'kvs'= {
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
            cand serve 'Serve the store over HTTP until SIGTERM or SIGINT, then save it and exit'
            cand get 'Print the value stored under KEY'
            cand dump 'Print every pair, sorted by key: a table on a terminal, JSON Lines otherwise'
            cand restore 'Replace (or with --merge, update) the data file from JSON Lines'
            cand completions 'Print a shell completion script to standard output'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'kvs;serve'= {
            cand --port 'TCP port to listen on (0 picks a free port, shown in the log) [default: 8001, or the port of --addr when that is given]'
            cand --working-dir 'Directory holding the data file (snapshot.jsonl), the write-ahead log (wal.jsonl) or a cluster member''s Raft log (raft-log.jsonl), and LOCK'
            cand --bind 'Address to listen on; 0.0.0.0 exposes the server to the network [default: 127.0.0.1, or the host of --addr when that is given]'
            cand --shutdown-timeout 'How long shutdown waits for requests in flight before saving anyway (e.g. 15s, 500ms, 1m)'
            cand --max-value-bytes 'Largest value accepted by PUT, in bytes; larger ones get 413'
            cand --fsync 'When logged writes reach the disk: `always` fsyncs before each acknowledgement (concurrent writes share one fsync), so nothing acknowledged is lost even on power loss; `periodic` fsyncs at least once a second, surviving a crash of the process but losing up to a second of writes on power loss (single-node mode; a cluster member always fsyncs)'
            cand --wal-max-bytes 'Fold the write-ahead log into the data file (a checkpoint) when it grows past this many bytes; in a cluster, snapshot the store and trim the Raft log (a compaction) when it does'
            cand --peers 'The cluster''s members, comma-separated HOST:PORT or :PORT (meaning 127.0.0.1:PORT); listing this member too is allowed. Empty or unset: a single node'
            cand --addr 'This member''s address and ID in the cluster, HOST:PORT, as the other members reach it [default: BIND:PORT]'
            cand --commit-timeout 'How long a cluster write may wait to be committed on a majority (and a read to have leadership confirmed) before it is answered 503'
            cand --token-file 'File holding the token that every request but GET or HEAD /health must carry as `Authorization: Bearer TOKEN` (surrounding whitespace trimmed; at least 32 visible ASCII characters; no access for group or others). Every member of a cluster uses the same one'
            cand --tls-cert 'PEM certificate chain (leaf first) for the port to serve HTTPS only; needs --tls-key'
            cand --tls-key 'PEM private key of --tls-cert'
            cand --tls-ca 'PEM CA certificates that members verify each other''s certificates against [default: the system''s roots]'
            cand --log-level 'How much the server logs to stderr'
            cand --insecure 'Serve on an address other than loopback without --token-file, which is otherwise refused (protected mode): anyone who can reach the port can then read, change and clear every key'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'kvs;get'= {
            cand --working-dir 'Directory holding the data file (snapshot.jsonl), the write-ahead log (wal.jsonl) or a cluster member''s Raft log (raft-log.jsonl), and LOCK'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'kvs;dump'= {
            cand --working-dir 'Directory holding the data file (snapshot.jsonl), the write-ahead log (wal.jsonl) or a cluster member''s Raft log (raft-log.jsonl), and LOCK'
            cand --format 'Output format [default: table on a terminal, jsonl otherwise]'
            cand --prefix 'Only pairs whose key starts with this prefix'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'kvs;restore'= {
            cand --working-dir 'Directory holding the data file (snapshot.jsonl), the write-ahead log (wal.jsonl) or a cluster member''s Raft log (raft-log.jsonl), and LOCK'
            cand --max-value-bytes 'Largest value accepted, in bytes, as for `kvs serve`'
            cand --force 'Replace a store that already holds data'
            cand --merge 'Add the input to the existing pairs; input lines win over existing keys'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'kvs;completions'= {
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'kvs;help'= {
            cand serve 'Serve the store over HTTP until SIGTERM or SIGINT, then save it and exit'
            cand get 'Print the value stored under KEY'
            cand dump 'Print every pair, sorted by key: a table on a terminal, JSON Lines otherwise'
            cand restore 'Replace (or with --merge, update) the data file from JSON Lines'
            cand completions 'Print a shell completion script to standard output'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'kvs;help;serve'= {
        }
        &'kvs;help;get'= {
        }
        &'kvs;help;dump'= {
        }
        &'kvs;help;restore'= {
        }
        &'kvs;help;completions'= {
        }
        &'kvs;help;help'= {
        }
    ]
    $completions[$command]
}
