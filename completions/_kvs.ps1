
using namespace System.Management.Automation
using namespace System.Management.Automation.Language

Register-ArgumentCompleter -Native -CommandName 'kvs' -ScriptBlock {
    param($wordToComplete, $commandAst, $cursorPosition)

    $commandElements = $commandAst.CommandElements
    $command = @(
        'kvs'
        for ($i = 1; $i -lt $commandElements.Count; $i++) {
            $element = $commandElements[$i]
            if ($element -isnot [StringConstantExpressionAst] -or
                $element.StringConstantType -ne [StringConstantType]::BareWord -or
                $element.Value.StartsWith('-') -or
                $element.Value -eq $wordToComplete) {
                break
        }
        $element.Value
    }) -join ';'

    $completions = @(switch ($command) {
        'kvs' {
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('serve', 'serve', [CompletionResultType]::ParameterValue, 'Serve the store over HTTP until SIGTERM or SIGINT, then save it and exit')
            [CompletionResult]::new('get', 'get', [CompletionResultType]::ParameterValue, 'Print the value stored under KEY')
            [CompletionResult]::new('dump', 'dump', [CompletionResultType]::ParameterValue, 'Print every pair, sorted by key: a table on a terminal, JSON Lines otherwise')
            [CompletionResult]::new('restore', 'restore', [CompletionResultType]::ParameterValue, 'Replace (or with --merge, update) the data file from JSON Lines')
            [CompletionResult]::new('completions', 'completions', [CompletionResultType]::ParameterValue, 'Print a shell completion script to standard output')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'kvs;serve' {
            [CompletionResult]::new('--port', '--port', [CompletionResultType]::ParameterName, 'TCP port to listen on (0 picks a free port, shown in the log) [default: 8001, or the port of --addr when that is given]')
            [CompletionResult]::new('--working-dir', '--working-dir', [CompletionResultType]::ParameterName, 'Directory holding the data file (snapshot.jsonl), the write-ahead log (wal.jsonl) or a cluster member''s Raft log (raft-log.jsonl), and LOCK')
            [CompletionResult]::new('--bind', '--bind', [CompletionResultType]::ParameterName, 'Address to listen on; 0.0.0.0 exposes the server to the network [default: 127.0.0.1, or the host of --addr when that is given]')
            [CompletionResult]::new('--shutdown-timeout', '--shutdown-timeout', [CompletionResultType]::ParameterName, 'How long shutdown waits for requests in flight before saving anyway (e.g. 15s, 500ms, 1m)')
            [CompletionResult]::new('--max-value-bytes', '--max-value-bytes', [CompletionResultType]::ParameterName, 'Largest value accepted by PUT, in bytes; larger ones get 413')
            [CompletionResult]::new('--fsync', '--fsync', [CompletionResultType]::ParameterName, 'When logged writes reach the disk: `always` fsyncs before each acknowledgement (concurrent writes share one fsync), so nothing acknowledged is lost even on power loss; `periodic` fsyncs at least once a second, surviving a crash of the process but losing up to a second of writes on power loss (single-node mode; a cluster member always fsyncs)')
            [CompletionResult]::new('--wal-max-bytes', '--wal-max-bytes', [CompletionResultType]::ParameterName, 'Fold the write-ahead log into the data file (a checkpoint) when it grows past this many bytes; in a cluster, snapshot the store and trim the Raft log (a compaction) when it does')
            [CompletionResult]::new('--peers', '--peers', [CompletionResultType]::ParameterName, 'The cluster''s members, comma-separated HOST:PORT or :PORT (meaning 127.0.0.1:PORT); listing this member too is allowed. Empty or unset: a single node')
            [CompletionResult]::new('--addr', '--addr', [CompletionResultType]::ParameterName, 'This member''s address and ID in the cluster, HOST:PORT, as the other members reach it [default: BIND:PORT]')
            [CompletionResult]::new('--commit-timeout', '--commit-timeout', [CompletionResultType]::ParameterName, 'How long a cluster write may wait to be committed on a majority (and a read to have leadership confirmed) before it is answered 503')
            [CompletionResult]::new('--token-file', '--token-file', [CompletionResultType]::ParameterName, 'File holding the token that every request but GET or HEAD /health must carry as `Authorization: Bearer TOKEN` (surrounding whitespace trimmed; at least 32 visible ASCII characters; no access for group or others). Every member of a cluster uses the same one')
            [CompletionResult]::new('--tls-cert', '--tls-cert', [CompletionResultType]::ParameterName, 'PEM certificate chain (leaf first) for the port to serve HTTPS only; needs --tls-key')
            [CompletionResult]::new('--tls-key', '--tls-key', [CompletionResultType]::ParameterName, 'PEM private key of --tls-cert')
            [CompletionResult]::new('--tls-ca', '--tls-ca', [CompletionResultType]::ParameterName, 'PEM CA certificates that members verify each other''s certificates against [default: the system''s roots]')
            [CompletionResult]::new('--log-level', '--log-level', [CompletionResultType]::ParameterName, 'How much the server logs to stderr')
            [CompletionResult]::new('--insecure', '--insecure', [CompletionResultType]::ParameterName, 'Serve on an address other than loopback without --token-file, which is otherwise refused (protected mode): anyone who can reach the port can then read, change and clear every key')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'kvs;get' {
            [CompletionResult]::new('--working-dir', '--working-dir', [CompletionResultType]::ParameterName, 'Directory holding the data file (snapshot.jsonl), the write-ahead log (wal.jsonl) or a cluster member''s Raft log (raft-log.jsonl), and LOCK')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'kvs;dump' {
            [CompletionResult]::new('--working-dir', '--working-dir', [CompletionResultType]::ParameterName, 'Directory holding the data file (snapshot.jsonl), the write-ahead log (wal.jsonl) or a cluster member''s Raft log (raft-log.jsonl), and LOCK')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Output format [default: table on a terminal, jsonl otherwise]')
            [CompletionResult]::new('--prefix', '--prefix', [CompletionResultType]::ParameterName, 'Only pairs whose key starts with this prefix')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'kvs;restore' {
            [CompletionResult]::new('--working-dir', '--working-dir', [CompletionResultType]::ParameterName, 'Directory holding the data file (snapshot.jsonl), the write-ahead log (wal.jsonl) or a cluster member''s Raft log (raft-log.jsonl), and LOCK')
            [CompletionResult]::new('--max-value-bytes', '--max-value-bytes', [CompletionResultType]::ParameterName, 'Largest value accepted, in bytes, as for `kvs serve`')
            [CompletionResult]::new('--force', '--force', [CompletionResultType]::ParameterName, 'Replace a store that already holds data')
            [CompletionResult]::new('--merge', '--merge', [CompletionResultType]::ParameterName, 'Add the input to the existing pairs; input lines win over existing keys')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'kvs;completions' {
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'kvs;help' {
            [CompletionResult]::new('serve', 'serve', [CompletionResultType]::ParameterValue, 'Serve the store over HTTP until SIGTERM or SIGINT, then save it and exit')
            [CompletionResult]::new('get', 'get', [CompletionResultType]::ParameterValue, 'Print the value stored under KEY')
            [CompletionResult]::new('dump', 'dump', [CompletionResultType]::ParameterValue, 'Print every pair, sorted by key: a table on a terminal, JSON Lines otherwise')
            [CompletionResult]::new('restore', 'restore', [CompletionResultType]::ParameterValue, 'Replace (or with --merge, update) the data file from JSON Lines')
            [CompletionResult]::new('completions', 'completions', [CompletionResultType]::ParameterValue, 'Print a shell completion script to standard output')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'kvs;help;serve' {
            break
        }
        'kvs;help;get' {
            break
        }
        'kvs;help;dump' {
            break
        }
        'kvs;help;restore' {
            break
        }
        'kvs;help;completions' {
            break
        }
        'kvs;help;help' {
            break
        }
    })

    $completions.Where{ $_.CompletionText -like "$wordToComplete*" } |
        Sort-Object -Property ListItemText
}
