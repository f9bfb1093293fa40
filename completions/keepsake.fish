# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_keepsake_global_optspecs
    string join \n json layout= allow-unencrypted-swap allow-core-dump-handler allow-disk-backed-tmp h/help V/version
end

function __fish_keepsake_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_keepsake_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_keepsake_using_subcommand
    set -l cmd (__fish_keepsake_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c keepsake -n "__fish_keepsake_needs_command" -l layout -d 'Layout profile: names and mount points of the volume' -r -f -a "tails\t'Tails Persistent Storage: partition and filesystem `TailsData`, unlocked as `TailsData_unlocked` and mounted at /live/persistence/TailsData_unlocked'
live-boot\t'Debian live-boot persistence: filesystem label `persistence`, mounted under /run/live/persistence'"
complete -c keepsake -n "__fish_keepsake_needs_command" -l json -d 'Print one JSON object on standard output instead of text; errors too'
complete -c keepsake -n "__fish_keepsake_needs_command" -l allow-unencrypted-swap -d 'Run even though unencrypted swap is active (secrets could be paged to disk)'
complete -c keepsake -n "__fish_keepsake_needs_command" -l allow-core-dump-handler -d 'Run even though a core-dump handler may write dumps to a disk'
complete -c keepsake -n "__fish_keepsake_needs_command" -l allow-disk-backed-tmp -d 'Run even though /tmp or /run/keepsake is not in RAM (tmpfs)'
complete -c keepsake -n "__fish_keepsake_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c keepsake -n "__fish_keepsake_needs_command" -s V -l version -d 'Print version'
complete -c keepsake -n "__fish_keepsake_needs_command" -f -a "create" -d 'Create a new encrypted volume in a container file'
complete -c keepsake -n "__fish_keepsake_needs_command" -f -a "unlock" -d 'Open the volume, mount it and activate its enabled features'
complete -c keepsake -n "__fish_keepsake_needs_command" -f -a "lock" -d 'Deactivate the features, unmount and close the volume, and forget it'
complete -c keepsake -n "__fish_keepsake_needs_command" -f -a "status" -d 'Show the volume, its mapping and mount, and each feature\'s state'
complete -c keepsake -n "__fish_keepsake_using_subcommand create" -l image -d 'The container file to create; it must not exist yet' -r -F
complete -c keepsake -n "__fish_keepsake_using_subcommand create" -l size -d 'Size of the container file: bytes, or with a K, M, G or T suffix (powers of 1024)' -r
complete -c keepsake -n "__fish_keepsake_using_subcommand create" -l live-user -d 'The live session\'s user, owner of the home folder features [default: the user with uid 1000]' -r
complete -c keepsake -n "__fish_keepsake_using_subcommand create" -l passphrase-fd -d 'Read the passphrase from file descriptor N: one line, the newline is dropped' -r
complete -c keepsake -n "__fish_keepsake_using_subcommand create" -l key-file -d 'Read the key from FILE, whole and byte for byte (as `cryptsetup --key-file`)' -r -F
complete -c keepsake -n "__fish_keepsake_using_subcommand create" -l pbkdf-memory -d 'Use exactly this argon2id memory, in KiB, instead of the calibrated cost' -r
complete -c keepsake -n "__fish_keepsake_using_subcommand create" -l pbkdf-force-iterations -d 'Use exactly this many argon2id iterations, without benchmark' -r
complete -c keepsake -n "__fish_keepsake_using_subcommand create" -l pbkdf-parallel -d 'argon2id threads with a fixed cost' -r
complete -c keepsake -n "__fish_keepsake_using_subcommand create" -l layout -d 'Layout profile: names and mount points of the volume' -r -f -a "tails\t'Tails Persistent Storage: partition and filesystem `TailsData`, unlocked as `TailsData_unlocked` and mounted at /live/persistence/TailsData_unlocked'
live-boot\t'Debian live-boot persistence: filesystem label `persistence`, mounted under /run/live/persistence'"
complete -c keepsake -n "__fish_keepsake_using_subcommand create" -l json -d 'Print one JSON object on standard output instead of text; errors too'
complete -c keepsake -n "__fish_keepsake_using_subcommand create" -l allow-unencrypted-swap -d 'Run even though unencrypted swap is active (secrets could be paged to disk)'
complete -c keepsake -n "__fish_keepsake_using_subcommand create" -l allow-core-dump-handler -d 'Run even though a core-dump handler may write dumps to a disk'
complete -c keepsake -n "__fish_keepsake_using_subcommand create" -l allow-disk-backed-tmp -d 'Run even though /tmp or /run/keepsake is not in RAM (tmpfs)'
complete -c keepsake -n "__fish_keepsake_using_subcommand create" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c keepsake -n "__fish_keepsake_using_subcommand create" -s V -l version -d 'Print version'
complete -c keepsake -n "__fish_keepsake_using_subcommand unlock" -l image -d 'The container file holding the volume' -r -F
complete -c keepsake -n "__fish_keepsake_using_subcommand unlock" -l mount-root -d 'Mount the volume here instead of the layout\'s mount point (for tests)' -r -F
complete -c keepsake -n "__fish_keepsake_using_subcommand unlock" -l live-user -d 'The live session\'s user [default: the user with uid 1000]' -r
complete -c keepsake -n "__fish_keepsake_using_subcommand unlock" -l passphrase-fd -d 'Read the passphrase from file descriptor N: one line, the newline is dropped' -r
complete -c keepsake -n "__fish_keepsake_using_subcommand unlock" -l key-file -d 'Read the key from FILE, whole and byte for byte (as `cryptsetup --key-file`)' -r -F
complete -c keepsake -n "__fish_keepsake_using_subcommand unlock" -l layout -d 'Layout profile: names and mount points of the volume' -r -f -a "tails\t'Tails Persistent Storage: partition and filesystem `TailsData`, unlocked as `TailsData_unlocked` and mounted at /live/persistence/TailsData_unlocked'
live-boot\t'Debian live-boot persistence: filesystem label `persistence`, mounted under /run/live/persistence'"
complete -c keepsake -n "__fish_keepsake_using_subcommand unlock" -l json -d 'Print one JSON object on standard output instead of text; errors too'
complete -c keepsake -n "__fish_keepsake_using_subcommand unlock" -l allow-unencrypted-swap -d 'Run even though unencrypted swap is active (secrets could be paged to disk)'
complete -c keepsake -n "__fish_keepsake_using_subcommand unlock" -l allow-core-dump-handler -d 'Run even though a core-dump handler may write dumps to a disk'
complete -c keepsake -n "__fish_keepsake_using_subcommand unlock" -l allow-disk-backed-tmp -d 'Run even though /tmp or /run/keepsake is not in RAM (tmpfs)'
complete -c keepsake -n "__fish_keepsake_using_subcommand unlock" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c keepsake -n "__fish_keepsake_using_subcommand unlock" -s V -l version -d 'Print version'
complete -c keepsake -n "__fish_keepsake_using_subcommand lock" -l layout -d 'Layout profile: names and mount points of the volume' -r -f -a "tails\t'Tails Persistent Storage: partition and filesystem `TailsData`, unlocked as `TailsData_unlocked` and mounted at /live/persistence/TailsData_unlocked'
live-boot\t'Debian live-boot persistence: filesystem label `persistence`, mounted under /run/live/persistence'"
complete -c keepsake -n "__fish_keepsake_using_subcommand lock" -l force -d 'End the processes that hold files of the volume open (SIGTERM, then SIGKILL)'
complete -c keepsake -n "__fish_keepsake_using_subcommand lock" -l json -d 'Print one JSON object on standard output instead of text; errors too'
complete -c keepsake -n "__fish_keepsake_using_subcommand lock" -l allow-unencrypted-swap -d 'Run even though unencrypted swap is active (secrets could be paged to disk)'
complete -c keepsake -n "__fish_keepsake_using_subcommand lock" -l allow-core-dump-handler -d 'Run even though a core-dump handler may write dumps to a disk'
complete -c keepsake -n "__fish_keepsake_using_subcommand lock" -l allow-disk-backed-tmp -d 'Run even though /tmp or /run/keepsake is not in RAM (tmpfs)'
complete -c keepsake -n "__fish_keepsake_using_subcommand lock" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c keepsake -n "__fish_keepsake_using_subcommand lock" -s V -l version -d 'Print version'
complete -c keepsake -n "__fish_keepsake_using_subcommand status" -l layout -d 'Layout profile: names and mount points of the volume' -r -f -a "tails\t'Tails Persistent Storage: partition and filesystem `TailsData`, unlocked as `TailsData_unlocked` and mounted at /live/persistence/TailsData_unlocked'
live-boot\t'Debian live-boot persistence: filesystem label `persistence`, mounted under /run/live/persistence'"
complete -c keepsake -n "__fish_keepsake_using_subcommand status" -l json -d 'Print one JSON object on standard output instead of text; errors too'
complete -c keepsake -n "__fish_keepsake_using_subcommand status" -l allow-unencrypted-swap -d 'Run even though unencrypted swap is active (secrets could be paged to disk)'
complete -c keepsake -n "__fish_keepsake_using_subcommand status" -l allow-core-dump-handler -d 'Run even though a core-dump handler may write dumps to a disk'
complete -c keepsake -n "__fish_keepsake_using_subcommand status" -l allow-disk-backed-tmp -d 'Run even though /tmp or /run/keepsake is not in RAM (tmpfs)'
complete -c keepsake -n "__fish_keepsake_using_subcommand status" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c keepsake -n "__fish_keepsake_using_subcommand status" -s V -l version -d 'Print version'
