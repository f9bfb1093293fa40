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

complete -c keepsake -n "__fish_keepsake_needs_command" -l layout -d 'Layout profile: names, mapping and mount point of the volume (see --help)' -r -f -a "tails\t'Tails Persistent Storage: partition and filesystem `TailsData`, unlocked as `TailsData_unlocked` and mounted at /live/persistence/TailsData_unlocked'
live-boot\t'Debian live-boot persistence: filesystem label `persistence`, mounted under /run/live/persistence'"
complete -c keepsake -n "__fish_keepsake_needs_command" -l json -d 'Print one JSON object on standard output instead of text; errors too'
complete -c keepsake -n "__fish_keepsake_needs_command" -l allow-unencrypted-swap -d 'Run even though unencrypted swap is active (secrets could be paged to disk)'
complete -c keepsake -n "__fish_keepsake_needs_command" -l allow-core-dump-handler -d 'Run even though a core-dump handler may write dumps to a disk'
complete -c keepsake -n "__fish_keepsake_needs_command" -l allow-disk-backed-tmp -d 'Run even though /tmp or /run/keepsake is not in RAM (tmpfs)'
complete -c keepsake -n "__fish_keepsake_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c keepsake -n "__fish_keepsake_needs_command" -s V -l version -d 'Print version'
complete -c keepsake -n "__fish_keepsake_needs_command" -f -a "create" -d 'Create a new encrypted volume on the live stick or in a container file'
complete -c keepsake -n "__fish_keepsake_needs_command" -f -a "unlock" -d 'Open the volume, mount it and activate its enabled features'
complete -c keepsake -n "__fish_keepsake_needs_command" -f -a "lock" -d 'Deactivate the features, unmount and close the volume, and forget it'
complete -c keepsake -n "__fish_keepsake_needs_command" -f -a "status" -d 'Show the volume, its mapping and mount, and each feature\'s state'
complete -c keepsake -n "__fish_keepsake_needs_command" -f -a "watch" -d 'Arm the watcher that wipes the volume key when the stick is pulled out'
complete -c keepsake -n "__fish_keepsake_needs_command" -f -a "feature" -d 'List, enable, disable, add and remove features (the folders that persist)'
complete -c keepsake -n "__fish_keepsake_needs_command" -f -a "passphrase" -d 'Change the passphrase; the volume key and the data stay as they are'
complete -c keepsake -n "__fish_keepsake_needs_command" -f -a "recovery-key" -d 'Add or remove the recovery key, for when the passphrase is lost'
complete -c keepsake -n "__fish_keepsake_needs_command" -f -a "upgrade" -d 'Upgrade an older volume: LUKS1 to LUKS2, PBKDF2 keyslots to argon2id'
complete -c keepsake -n "__fish_keepsake_needs_command" -f -a "check" -d 'Check the header, keyslots, filesystem and persistence.conf; changes nothing'
complete -c keepsake -n "__fish_keepsake_needs_command" -f -a "repair" -d 'Repair the filesystem (e2fsck -y) and persistence.conf; never deletes user data'
complete -c keepsake -n "__fish_keepsake_needs_command" -f -a "delete" -d 'Destroy the volume for good: keyslots, header, then its partition or file'
complete -c keepsake -n "__fish_keepsake_needs_command" -f -a "backup" -d 'Write an encrypted, authenticated backup of the unlocked volume (or of features)'
complete -c keepsake -n "__fish_keepsake_needs_command" -f -a "restore" -d 'Restore a backup into the unlocked volume, once all of it has authenticated'
complete -c keepsake -n "__fish_keepsake_using_subcommand create" -l device -d 'The whole disk of the live stick (e.g. /dev/sdb): a TailsData partition is added' -r -F
complete -c keepsake -n "__fish_keepsake_using_subcommand create" -l image -d 'A container file to create instead; it must not exist yet' -r -F
complete -c keepsake -n "__fish_keepsake_using_subcommand create" -l size -d 'Size of the container file: bytes, or with a K, M, G or T suffix (powers of 1024)' -r
complete -c keepsake -n "__fish_keepsake_using_subcommand create" -l live-user -d 'The live session\'s user, owner of the home folder features [default: the user with uid 1000]' -r
complete -c keepsake -n "__fish_keepsake_using_subcommand create" -l passphrase-fd -d 'Read the passphrase from file descriptor N: one line, the newline is dropped' -r
complete -c keepsake -n "__fish_keepsake_using_subcommand create" -l key-file -d 'Read the key from FILE, whole and byte for byte (as `cryptsetup --key-file`)' -r -F
complete -c keepsake -n "__fish_keepsake_using_subcommand create" -l pbkdf-memory -d 'Use exactly this argon2id memory, in KiB, instead of the calibrated cost' -r
complete -c keepsake -n "__fish_keepsake_using_subcommand create" -l pbkdf-force-iterations -d 'Use exactly this many argon2id iterations, without benchmark' -r
complete -c keepsake -n "__fish_keepsake_using_subcommand create" -l pbkdf-max-memory -d 'The most memory a calibrated argon2id keyslot may take, in KiB [default: half of the available RAM, at most 1 GiB]. Raise it for a stronger key on a big machine: every machine that unlocks the volume needs that much free RAM' -r
complete -c keepsake -n "__fish_keepsake_using_subcommand create" -l pbkdf-parallel -d 'argon2id threads with a fixed cost' -r
complete -c keepsake -n "__fish_keepsake_using_subcommand create" -l layout -d 'Layout profile: names, mapping and mount point of the volume (see --help)' -r -f -a "tails\t'Tails Persistent Storage: partition and filesystem `TailsData`, unlocked as `TailsData_unlocked` and mounted at /live/persistence/TailsData_unlocked'
live-boot\t'Debian live-boot persistence: filesystem label `persistence`, mounted under /run/live/persistence'"
complete -c keepsake -n "__fish_keepsake_using_subcommand create" -s y -l yes -d 'Do not ask for confirmation before partitioning'
complete -c keepsake -n "__fish_keepsake_using_subcommand create" -l json -d 'Print one JSON object on standard output instead of text; errors too'
complete -c keepsake -n "__fish_keepsake_using_subcommand create" -l allow-unencrypted-swap -d 'Run even though unencrypted swap is active (secrets could be paged to disk)'
complete -c keepsake -n "__fish_keepsake_using_subcommand create" -l allow-core-dump-handler -d 'Run even though a core-dump handler may write dumps to a disk'
complete -c keepsake -n "__fish_keepsake_using_subcommand create" -l allow-disk-backed-tmp -d 'Run even though /tmp or /run/keepsake is not in RAM (tmpfs)'
complete -c keepsake -n "__fish_keepsake_using_subcommand create" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c keepsake -n "__fish_keepsake_using_subcommand create" -s V -l version -d 'Print version'
complete -c keepsake -n "__fish_keepsake_using_subcommand unlock" -l device -d 'The persistence partition, or the disk to look for it on [default: found by name]' -r -F
complete -c keepsake -n "__fish_keepsake_using_subcommand unlock" -l image -d 'A container file holding the volume' -r -F
complete -c keepsake -n "__fish_keepsake_using_subcommand unlock" -l mount-root -d 'Mount the volume here instead of the layout\'s mount point (for tests)' -r -F
complete -c keepsake -n "__fish_keepsake_using_subcommand unlock" -l live-user -d 'The live session\'s user [default: the user with uid 1000]' -r
complete -c keepsake -n "__fish_keepsake_using_subcommand unlock" -l on-removal -d 'What follows the key wipe: wipe (detach the volume only), end (also kill the processes holding its files), shutdown (end, then power off)' -r -f -a "wipe\t'Wipe the key, detach the volume\'s mounts, drop the page cache, remove the mapping once nothing holds it; processes that hold its files keep running (and get I/O errors)'
end\t'As wipe, and first kill (SIGKILL) every process holding files of the volume, in any mount namespace: their memory holds what they read, and the mapping can go'
shutdown\t'As end, then power the machine off at once, as Tails does when its boot stick is pulled'"
complete -c keepsake -n "__fish_keepsake_using_subcommand unlock" -l passphrase-fd -d 'Read the passphrase from file descriptor N: one line, the newline is dropped' -r
complete -c keepsake -n "__fish_keepsake_using_subcommand unlock" -l key-file -d 'Read the key from FILE, whole and byte for byte (as `cryptsetup --key-file`)' -r -F
complete -c keepsake -n "__fish_keepsake_using_subcommand unlock" -l layout -d 'Layout profile: names, mapping and mount point of the volume (see --help)' -r -f -a "tails\t'Tails Persistent Storage: partition and filesystem `TailsData`, unlocked as `TailsData_unlocked` and mounted at /live/persistence/TailsData_unlocked'
live-boot\t'Debian live-boot persistence: filesystem label `persistence`, mounted under /run/live/persistence'"
complete -c keepsake -n "__fish_keepsake_using_subcommand unlock" -l recovery-key -d 'Read the recovery key instead of the passphrase (same sources)'
complete -c keepsake -n "__fish_keepsake_using_subcommand unlock" -l require-watch -d 'Fail (exit 6, the volume closed again) when the watcher cannot be armed, instead of warning'
complete -c keepsake -n "__fish_keepsake_using_subcommand unlock" -l json -d 'Print one JSON object on standard output instead of text; errors too'
complete -c keepsake -n "__fish_keepsake_using_subcommand unlock" -l allow-unencrypted-swap -d 'Run even though unencrypted swap is active (secrets could be paged to disk)'
complete -c keepsake -n "__fish_keepsake_using_subcommand unlock" -l allow-core-dump-handler -d 'Run even though a core-dump handler may write dumps to a disk'
complete -c keepsake -n "__fish_keepsake_using_subcommand unlock" -l allow-disk-backed-tmp -d 'Run even though /tmp or /run/keepsake is not in RAM (tmpfs)'
complete -c keepsake -n "__fish_keepsake_using_subcommand unlock" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c keepsake -n "__fish_keepsake_using_subcommand unlock" -s V -l version -d 'Print version'
complete -c keepsake -n "__fish_keepsake_using_subcommand lock" -l device -d 'Lock only this volume: its partition, container file, loop device or /dev/mapper name; or the volumes on this disk [default: every unlocked volume of the layout]' -r -F
complete -c keepsake -n "__fish_keepsake_using_subcommand lock" -l layout -d 'Layout profile: names, mapping and mount point of the volume (see --help)' -r -f -a "tails\t'Tails Persistent Storage: partition and filesystem `TailsData`, unlocked as `TailsData_unlocked` and mounted at /live/persistence/TailsData_unlocked'
live-boot\t'Debian live-boot persistence: filesystem label `persistence`, mounted under /run/live/persistence'"
complete -c keepsake -n "__fish_keepsake_using_subcommand lock" -l force -d 'End the processes that hold files of the volume open (SIGTERM, then SIGKILL)'
complete -c keepsake -n "__fish_keepsake_using_subcommand lock" -l now -d 'Panic: wipe the volume key from the kernel first, at once, then lock as --force does. Data not yet written to the stick is lost'
complete -c keepsake -n "__fish_keepsake_using_subcommand lock" -l json -d 'Print one JSON object on standard output instead of text; errors too'
complete -c keepsake -n "__fish_keepsake_using_subcommand lock" -l allow-unencrypted-swap -d 'Run even though unencrypted swap is active (secrets could be paged to disk)'
complete -c keepsake -n "__fish_keepsake_using_subcommand lock" -l allow-core-dump-handler -d 'Run even though a core-dump handler may write dumps to a disk'
complete -c keepsake -n "__fish_keepsake_using_subcommand lock" -l allow-disk-backed-tmp -d 'Run even though /tmp or /run/keepsake is not in RAM (tmpfs)'
complete -c keepsake -n "__fish_keepsake_using_subcommand lock" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c keepsake -n "__fish_keepsake_using_subcommand lock" -s V -l version -d 'Print version'
complete -c keepsake -n "__fish_keepsake_using_subcommand status" -l layout -d 'Layout profile: names, mapping and mount point of the volume (see --help)' -r -f -a "tails\t'Tails Persistent Storage: partition and filesystem `TailsData`, unlocked as `TailsData_unlocked` and mounted at /live/persistence/TailsData_unlocked'
live-boot\t'Debian live-boot persistence: filesystem label `persistence`, mounted under /run/live/persistence'"
complete -c keepsake -n "__fish_keepsake_using_subcommand status" -l json -d 'Print one JSON object on standard output instead of text; errors too'
complete -c keepsake -n "__fish_keepsake_using_subcommand status" -l allow-unencrypted-swap -d 'Run even though unencrypted swap is active (secrets could be paged to disk)'
complete -c keepsake -n "__fish_keepsake_using_subcommand status" -l allow-core-dump-handler -d 'Run even though a core-dump handler may write dumps to a disk'
complete -c keepsake -n "__fish_keepsake_using_subcommand status" -l allow-disk-backed-tmp -d 'Run even though /tmp or /run/keepsake is not in RAM (tmpfs)'
complete -c keepsake -n "__fish_keepsake_using_subcommand status" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c keepsake -n "__fish_keepsake_using_subcommand status" -s V -l version -d 'Print version'
complete -c keepsake -n "__fish_keepsake_using_subcommand watch" -l on-removal -d 'What follows the key wipe: wipe, end or shutdown (see keepsake unlock --help)' -r -f -a "wipe\t'Wipe the key, detach the volume\'s mounts, drop the page cache, remove the mapping once nothing holds it; processes that hold its files keep running (and get I/O errors)'
end\t'As wipe, and first kill (SIGKILL) every process holding files of the volume, in any mount namespace: their memory holds what they read, and the mapping can go'
shutdown\t'As end, then power the machine off at once, as Tails does when its boot stick is pulled'"
complete -c keepsake -n "__fish_keepsake_using_subcommand watch" -l device -d 'Arm it for this volume only: its partition, container file, loop device or /dev/mapper name [default: every unlocked volume of the layout]' -r -F
complete -c keepsake -n "__fish_keepsake_using_subcommand watch" -l serve -d 'Be the watcher of this mapping (run by unlock and watch, never by hand)' -r
complete -c keepsake -n "__fish_keepsake_using_subcommand watch" -l layout -d 'Layout profile: names, mapping and mount point of the volume (see --help)' -r -f -a "tails\t'Tails Persistent Storage: partition and filesystem `TailsData`, unlocked as `TailsData_unlocked` and mounted at /live/persistence/TailsData_unlocked'
live-boot\t'Debian live-boot persistence: filesystem label `persistence`, mounted under /run/live/persistence'"
complete -c keepsake -n "__fish_keepsake_using_subcommand watch" -l json -d 'Print one JSON object on standard output instead of text; errors too'
complete -c keepsake -n "__fish_keepsake_using_subcommand watch" -l allow-unencrypted-swap -d 'Run even though unencrypted swap is active (secrets could be paged to disk)'
complete -c keepsake -n "__fish_keepsake_using_subcommand watch" -l allow-core-dump-handler -d 'Run even though a core-dump handler may write dumps to a disk'
complete -c keepsake -n "__fish_keepsake_using_subcommand watch" -l allow-disk-backed-tmp -d 'Run even though /tmp or /run/keepsake is not in RAM (tmpfs)'
complete -c keepsake -n "__fish_keepsake_using_subcommand watch" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c keepsake -n "__fish_keepsake_using_subcommand watch" -s V -l version -d 'Print version'
complete -c keepsake -n "__fish_keepsake_using_subcommand feature; and not __fish_seen_subcommand_from list enable disable add remove" -l layout -d 'Layout profile: names, mapping and mount point of the volume (see --help)' -r -f -a "tails\t'Tails Persistent Storage: partition and filesystem `TailsData`, unlocked as `TailsData_unlocked` and mounted at /live/persistence/TailsData_unlocked'
live-boot\t'Debian live-boot persistence: filesystem label `persistence`, mounted under /run/live/persistence'"
complete -c keepsake -n "__fish_keepsake_using_subcommand feature; and not __fish_seen_subcommand_from list enable disable add remove" -l json -d 'Print one JSON object on standard output instead of text; errors too'
complete -c keepsake -n "__fish_keepsake_using_subcommand feature; and not __fish_seen_subcommand_from list enable disable add remove" -l allow-unencrypted-swap -d 'Run even though unencrypted swap is active (secrets could be paged to disk)'
complete -c keepsake -n "__fish_keepsake_using_subcommand feature; and not __fish_seen_subcommand_from list enable disable add remove" -l allow-core-dump-handler -d 'Run even though a core-dump handler may write dumps to a disk'
complete -c keepsake -n "__fish_keepsake_using_subcommand feature; and not __fish_seen_subcommand_from list enable disable add remove" -l allow-disk-backed-tmp -d 'Run even though /tmp or /run/keepsake is not in RAM (tmpfs)'
complete -c keepsake -n "__fish_keepsake_using_subcommand feature; and not __fish_seen_subcommand_from list enable disable add remove" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c keepsake -n "__fish_keepsake_using_subcommand feature; and not __fish_seen_subcommand_from list enable disable add remove" -s V -l version -d 'Print version'
complete -c keepsake -n "__fish_keepsake_using_subcommand feature; and not __fish_seen_subcommand_from list enable disable add remove" -f -a "list" -d 'List the built-in and custom features, and whether each is enabled and active'
complete -c keepsake -n "__fish_keepsake_using_subcommand feature; and not __fish_seen_subcommand_from list enable disable add remove" -f -a "enable" -d 'Enable features: add them to persistence.conf and activate them now'
complete -c keepsake -n "__fish_keepsake_using_subcommand feature; and not __fish_seen_subcommand_from list enable disable add remove" -f -a "disable" -d 'Disable features: deactivate them now and remove them from persistence.conf. Their data stays in the volume'
complete -c keepsake -n "__fish_keepsake_using_subcommand feature; and not __fish_seen_subcommand_from list enable disable add remove" -f -a "add" -d 'Add a custom feature: the folder DEST persists, in the volume folder NAME'
complete -c keepsake -n "__fish_keepsake_using_subcommand feature; and not __fish_seen_subcommand_from list enable disable add remove" -f -a "remove" -d 'Remove a custom feature (disabling it first)'
complete -c keepsake -n "__fish_keepsake_using_subcommand feature; and __fish_seen_subcommand_from list" -l layout -d 'Layout profile: names, mapping and mount point of the volume (see --help)' -r -f -a "tails\t'Tails Persistent Storage: partition and filesystem `TailsData`, unlocked as `TailsData_unlocked` and mounted at /live/persistence/TailsData_unlocked'
live-boot\t'Debian live-boot persistence: filesystem label `persistence`, mounted under /run/live/persistence'"
complete -c keepsake -n "__fish_keepsake_using_subcommand feature; and __fish_seen_subcommand_from list" -l json -d 'Print one JSON object on standard output instead of text; errors too'
complete -c keepsake -n "__fish_keepsake_using_subcommand feature; and __fish_seen_subcommand_from list" -l allow-unencrypted-swap -d 'Run even though unencrypted swap is active (secrets could be paged to disk)'
complete -c keepsake -n "__fish_keepsake_using_subcommand feature; and __fish_seen_subcommand_from list" -l allow-core-dump-handler -d 'Run even though a core-dump handler may write dumps to a disk'
complete -c keepsake -n "__fish_keepsake_using_subcommand feature; and __fish_seen_subcommand_from list" -l allow-disk-backed-tmp -d 'Run even though /tmp or /run/keepsake is not in RAM (tmpfs)'
complete -c keepsake -n "__fish_keepsake_using_subcommand feature; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c keepsake -n "__fish_keepsake_using_subcommand feature; and __fish_seen_subcommand_from list" -s V -l version -d 'Print version'
complete -c keepsake -n "__fish_keepsake_using_subcommand feature; and __fish_seen_subcommand_from enable" -l layout -d 'Layout profile: names, mapping and mount point of the volume (see --help)' -r -f -a "tails\t'Tails Persistent Storage: partition and filesystem `TailsData`, unlocked as `TailsData_unlocked` and mounted at /live/persistence/TailsData_unlocked'
live-boot\t'Debian live-boot persistence: filesystem label `persistence`, mounted under /run/live/persistence'"
complete -c keepsake -n "__fish_keepsake_using_subcommand feature; and __fish_seen_subcommand_from enable" -l json -d 'Print one JSON object on standard output instead of text; errors too'
complete -c keepsake -n "__fish_keepsake_using_subcommand feature; and __fish_seen_subcommand_from enable" -l allow-unencrypted-swap -d 'Run even though unencrypted swap is active (secrets could be paged to disk)'
complete -c keepsake -n "__fish_keepsake_using_subcommand feature; and __fish_seen_subcommand_from enable" -l allow-core-dump-handler -d 'Run even though a core-dump handler may write dumps to a disk'
complete -c keepsake -n "__fish_keepsake_using_subcommand feature; and __fish_seen_subcommand_from enable" -l allow-disk-backed-tmp -d 'Run even though /tmp or /run/keepsake is not in RAM (tmpfs)'
complete -c keepsake -n "__fish_keepsake_using_subcommand feature; and __fish_seen_subcommand_from enable" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c keepsake -n "__fish_keepsake_using_subcommand feature; and __fish_seen_subcommand_from enable" -s V -l version -d 'Print version'
complete -c keepsake -n "__fish_keepsake_using_subcommand feature; and __fish_seen_subcommand_from disable" -l layout -d 'Layout profile: names, mapping and mount point of the volume (see --help)' -r -f -a "tails\t'Tails Persistent Storage: partition and filesystem `TailsData`, unlocked as `TailsData_unlocked` and mounted at /live/persistence/TailsData_unlocked'
live-boot\t'Debian live-boot persistence: filesystem label `persistence`, mounted under /run/live/persistence'"
complete -c keepsake -n "__fish_keepsake_using_subcommand feature; and __fish_seen_subcommand_from disable" -l json -d 'Print one JSON object on standard output instead of text; errors too'
complete -c keepsake -n "__fish_keepsake_using_subcommand feature; and __fish_seen_subcommand_from disable" -l allow-unencrypted-swap -d 'Run even though unencrypted swap is active (secrets could be paged to disk)'
complete -c keepsake -n "__fish_keepsake_using_subcommand feature; and __fish_seen_subcommand_from disable" -l allow-core-dump-handler -d 'Run even though a core-dump handler may write dumps to a disk'
complete -c keepsake -n "__fish_keepsake_using_subcommand feature; and __fish_seen_subcommand_from disable" -l allow-disk-backed-tmp -d 'Run even though /tmp or /run/keepsake is not in RAM (tmpfs)'
complete -c keepsake -n "__fish_keepsake_using_subcommand feature; and __fish_seen_subcommand_from disable" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c keepsake -n "__fish_keepsake_using_subcommand feature; and __fish_seen_subcommand_from disable" -s V -l version -d 'Print version'
complete -c keepsake -n "__fish_keepsake_using_subcommand feature; and __fish_seen_subcommand_from add" -l dest -d 'The folder in the session that persists (an absolute path)' -r -F
complete -c keepsake -n "__fish_keepsake_using_subcommand feature; and __fish_seen_subcommand_from add" -l layout -d 'Layout profile: names, mapping and mount point of the volume (see --help)' -r -f -a "tails\t'Tails Persistent Storage: partition and filesystem `TailsData`, unlocked as `TailsData_unlocked` and mounted at /live/persistence/TailsData_unlocked'
live-boot\t'Debian live-boot persistence: filesystem label `persistence`, mounted under /run/live/persistence'"
complete -c keepsake -n "__fish_keepsake_using_subcommand feature; and __fish_seen_subcommand_from add" -l link -d 'Symlink each file into DEST instead of binding the whole folder'
complete -c keepsake -n "__fish_keepsake_using_subcommand feature; and __fish_seen_subcommand_from add" -l file -d 'DEST is one file, bind-mounted from the file NAME of the volume (Tails layout)'
complete -c keepsake -n "__fish_keepsake_using_subcommand feature; and __fish_seen_subcommand_from add" -l union -d 'Overlay DEST: its files show through, changes persist in NAME/rw (live-boot layout)'
complete -c keepsake -n "__fish_keepsake_using_subcommand feature; and __fish_seen_subcommand_from add" -l json -d 'Print one JSON object on standard output instead of text; errors too'
complete -c keepsake -n "__fish_keepsake_using_subcommand feature; and __fish_seen_subcommand_from add" -l allow-unencrypted-swap -d 'Run even though unencrypted swap is active (secrets could be paged to disk)'
complete -c keepsake -n "__fish_keepsake_using_subcommand feature; and __fish_seen_subcommand_from add" -l allow-core-dump-handler -d 'Run even though a core-dump handler may write dumps to a disk'
complete -c keepsake -n "__fish_keepsake_using_subcommand feature; and __fish_seen_subcommand_from add" -l allow-disk-backed-tmp -d 'Run even though /tmp or /run/keepsake is not in RAM (tmpfs)'
complete -c keepsake -n "__fish_keepsake_using_subcommand feature; and __fish_seen_subcommand_from add" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c keepsake -n "__fish_keepsake_using_subcommand feature; and __fish_seen_subcommand_from add" -s V -l version -d 'Print version'
complete -c keepsake -n "__fish_keepsake_using_subcommand feature; and __fish_seen_subcommand_from remove" -l layout -d 'Layout profile: names, mapping and mount point of the volume (see --help)' -r -f -a "tails\t'Tails Persistent Storage: partition and filesystem `TailsData`, unlocked as `TailsData_unlocked` and mounted at /live/persistence/TailsData_unlocked'
live-boot\t'Debian live-boot persistence: filesystem label `persistence`, mounted under /run/live/persistence'"
complete -c keepsake -n "__fish_keepsake_using_subcommand feature; and __fish_seen_subcommand_from remove" -l delete-data -d 'Also delete its folder from the volume (asks for confirmation without --yes)'
complete -c keepsake -n "__fish_keepsake_using_subcommand feature; and __fish_seen_subcommand_from remove" -s y -l yes -d 'Do not ask for confirmation'
complete -c keepsake -n "__fish_keepsake_using_subcommand feature; and __fish_seen_subcommand_from remove" -l json -d 'Print one JSON object on standard output instead of text; errors too'
complete -c keepsake -n "__fish_keepsake_using_subcommand feature; and __fish_seen_subcommand_from remove" -l allow-unencrypted-swap -d 'Run even though unencrypted swap is active (secrets could be paged to disk)'
complete -c keepsake -n "__fish_keepsake_using_subcommand feature; and __fish_seen_subcommand_from remove" -l allow-core-dump-handler -d 'Run even though a core-dump handler may write dumps to a disk'
complete -c keepsake -n "__fish_keepsake_using_subcommand feature; and __fish_seen_subcommand_from remove" -l allow-disk-backed-tmp -d 'Run even though /tmp or /run/keepsake is not in RAM (tmpfs)'
complete -c keepsake -n "__fish_keepsake_using_subcommand feature; and __fish_seen_subcommand_from remove" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c keepsake -n "__fish_keepsake_using_subcommand feature; and __fish_seen_subcommand_from remove" -s V -l version -d 'Print version'
complete -c keepsake -n "__fish_keepsake_using_subcommand passphrase; and not __fish_seen_subcommand_from change" -l layout -d 'Layout profile: names, mapping and mount point of the volume (see --help)' -r -f -a "tails\t'Tails Persistent Storage: partition and filesystem `TailsData`, unlocked as `TailsData_unlocked` and mounted at /live/persistence/TailsData_unlocked'
live-boot\t'Debian live-boot persistence: filesystem label `persistence`, mounted under /run/live/persistence'"
complete -c keepsake -n "__fish_keepsake_using_subcommand passphrase; and not __fish_seen_subcommand_from change" -l json -d 'Print one JSON object on standard output instead of text; errors too'
complete -c keepsake -n "__fish_keepsake_using_subcommand passphrase; and not __fish_seen_subcommand_from change" -l allow-unencrypted-swap -d 'Run even though unencrypted swap is active (secrets could be paged to disk)'
complete -c keepsake -n "__fish_keepsake_using_subcommand passphrase; and not __fish_seen_subcommand_from change" -l allow-core-dump-handler -d 'Run even though a core-dump handler may write dumps to a disk'
complete -c keepsake -n "__fish_keepsake_using_subcommand passphrase; and not __fish_seen_subcommand_from change" -l allow-disk-backed-tmp -d 'Run even though /tmp or /run/keepsake is not in RAM (tmpfs)'
complete -c keepsake -n "__fish_keepsake_using_subcommand passphrase; and not __fish_seen_subcommand_from change" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c keepsake -n "__fish_keepsake_using_subcommand passphrase; and not __fish_seen_subcommand_from change" -s V -l version -d 'Print version'
complete -c keepsake -n "__fish_keepsake_using_subcommand passphrase; and not __fish_seen_subcommand_from change" -f -a "change" -d 'Replace the passphrase by a new one (asked twice on a terminal). Done in one header update: the old passphrase works until the new one does, and not afterwards'
complete -c keepsake -n "__fish_keepsake_using_subcommand passphrase; and __fish_seen_subcommand_from change" -l device -d 'The persistence partition, or the disk to look for it on [default: found by name]' -r -F
complete -c keepsake -n "__fish_keepsake_using_subcommand passphrase; and __fish_seen_subcommand_from change" -l image -d 'A container file holding the volume' -r -F
complete -c keepsake -n "__fish_keepsake_using_subcommand passphrase; and __fish_seen_subcommand_from change" -l passphrase-fd -d 'Read the passphrase from file descriptor N: one line, the newline is dropped' -r
complete -c keepsake -n "__fish_keepsake_using_subcommand passphrase; and __fish_seen_subcommand_from change" -l key-file -d 'Read the key from FILE, whole and byte for byte (as `cryptsetup --key-file`)' -r -F
complete -c keepsake -n "__fish_keepsake_using_subcommand passphrase; and __fish_seen_subcommand_from change" -l new-passphrase-fd -d 'Read the new passphrase from file descriptor N (one line)' -r
complete -c keepsake -n "__fish_keepsake_using_subcommand passphrase; and __fish_seen_subcommand_from change" -l new-key-file -d 'Read the new key from FILE, whole and byte for byte' -r -F
complete -c keepsake -n "__fish_keepsake_using_subcommand passphrase; and __fish_seen_subcommand_from change" -l pbkdf-memory -d 'Use exactly this argon2id memory, in KiB, instead of the calibrated cost' -r
complete -c keepsake -n "__fish_keepsake_using_subcommand passphrase; and __fish_seen_subcommand_from change" -l pbkdf-force-iterations -d 'Use exactly this many argon2id iterations, without benchmark' -r
complete -c keepsake -n "__fish_keepsake_using_subcommand passphrase; and __fish_seen_subcommand_from change" -l pbkdf-max-memory -d 'The most memory a calibrated argon2id keyslot may take, in KiB [default: half of the available RAM, at most 1 GiB]. Raise it for a stronger key on a big machine: every machine that unlocks the volume needs that much free RAM' -r
complete -c keepsake -n "__fish_keepsake_using_subcommand passphrase; and __fish_seen_subcommand_from change" -l pbkdf-parallel -d 'argon2id threads with a fixed cost' -r
complete -c keepsake -n "__fish_keepsake_using_subcommand passphrase; and __fish_seen_subcommand_from change" -l layout -d 'Layout profile: names, mapping and mount point of the volume (see --help)' -r -f -a "tails\t'Tails Persistent Storage: partition and filesystem `TailsData`, unlocked as `TailsData_unlocked` and mounted at /live/persistence/TailsData_unlocked'
live-boot\t'Debian live-boot persistence: filesystem label `persistence`, mounted under /run/live/persistence'"
complete -c keepsake -n "__fish_keepsake_using_subcommand passphrase; and __fish_seen_subcommand_from change" -l json -d 'Print one JSON object on standard output instead of text; errors too'
complete -c keepsake -n "__fish_keepsake_using_subcommand passphrase; and __fish_seen_subcommand_from change" -l allow-unencrypted-swap -d 'Run even though unencrypted swap is active (secrets could be paged to disk)'
complete -c keepsake -n "__fish_keepsake_using_subcommand passphrase; and __fish_seen_subcommand_from change" -l allow-core-dump-handler -d 'Run even though a core-dump handler may write dumps to a disk'
complete -c keepsake -n "__fish_keepsake_using_subcommand passphrase; and __fish_seen_subcommand_from change" -l allow-disk-backed-tmp -d 'Run even though /tmp or /run/keepsake is not in RAM (tmpfs)'
complete -c keepsake -n "__fish_keepsake_using_subcommand passphrase; and __fish_seen_subcommand_from change" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c keepsake -n "__fish_keepsake_using_subcommand passphrase; and __fish_seen_subcommand_from change" -s V -l version -d 'Print version'
complete -c keepsake -n "__fish_keepsake_using_subcommand recovery-key; and not __fish_seen_subcommand_from add remove" -l layout -d 'Layout profile: names, mapping and mount point of the volume (see --help)' -r -f -a "tails\t'Tails Persistent Storage: partition and filesystem `TailsData`, unlocked as `TailsData_unlocked` and mounted at /live/persistence/TailsData_unlocked'
live-boot\t'Debian live-boot persistence: filesystem label `persistence`, mounted under /run/live/persistence'"
complete -c keepsake -n "__fish_keepsake_using_subcommand recovery-key; and not __fish_seen_subcommand_from add remove" -l json -d 'Print one JSON object on standard output instead of text; errors too'
complete -c keepsake -n "__fish_keepsake_using_subcommand recovery-key; and not __fish_seen_subcommand_from add remove" -l allow-unencrypted-swap -d 'Run even though unencrypted swap is active (secrets could be paged to disk)'
complete -c keepsake -n "__fish_keepsake_using_subcommand recovery-key; and not __fish_seen_subcommand_from add remove" -l allow-core-dump-handler -d 'Run even though a core-dump handler may write dumps to a disk'
complete -c keepsake -n "__fish_keepsake_using_subcommand recovery-key; and not __fish_seen_subcommand_from add remove" -l allow-disk-backed-tmp -d 'Run even though /tmp or /run/keepsake is not in RAM (tmpfs)'
complete -c keepsake -n "__fish_keepsake_using_subcommand recovery-key; and not __fish_seen_subcommand_from add remove" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c keepsake -n "__fish_keepsake_using_subcommand recovery-key; and not __fish_seen_subcommand_from add remove" -s V -l version -d 'Print version'
complete -c keepsake -n "__fish_keepsake_using_subcommand recovery-key; and not __fish_seen_subcommand_from add remove" -f -a "add" -d 'Generate a recovery key, add it in its own keyslot and show it once'
complete -c keepsake -n "__fish_keepsake_using_subcommand recovery-key; and not __fish_seen_subcommand_from add remove" -f -a "remove" -d 'Destroy the recovery key\'s keyslot (the passphrase is asked, and must still work)'
complete -c keepsake -n "__fish_keepsake_using_subcommand recovery-key; and __fish_seen_subcommand_from add" -l device -d 'The persistence partition, or the disk to look for it on [default: found by name]' -r -F
complete -c keepsake -n "__fish_keepsake_using_subcommand recovery-key; and __fish_seen_subcommand_from add" -l image -d 'A container file holding the volume' -r -F
complete -c keepsake -n "__fish_keepsake_using_subcommand recovery-key; and __fish_seen_subcommand_from add" -l passphrase-fd -d 'Read the passphrase from file descriptor N: one line, the newline is dropped' -r
complete -c keepsake -n "__fish_keepsake_using_subcommand recovery-key; and __fish_seen_subcommand_from add" -l key-file -d 'Read the key from FILE, whole and byte for byte (as `cryptsetup --key-file`)' -r -F
complete -c keepsake -n "__fish_keepsake_using_subcommand recovery-key; and __fish_seen_subcommand_from add" -l pbkdf-memory -d 'Use exactly this argon2id memory, in KiB, instead of the calibrated cost' -r
complete -c keepsake -n "__fish_keepsake_using_subcommand recovery-key; and __fish_seen_subcommand_from add" -l pbkdf-force-iterations -d 'Use exactly this many argon2id iterations, without benchmark' -r
complete -c keepsake -n "__fish_keepsake_using_subcommand recovery-key; and __fish_seen_subcommand_from add" -l pbkdf-max-memory -d 'The most memory a calibrated argon2id keyslot may take, in KiB [default: half of the available RAM, at most 1 GiB]. Raise it for a stronger key on a big machine: every machine that unlocks the volume needs that much free RAM' -r
complete -c keepsake -n "__fish_keepsake_using_subcommand recovery-key; and __fish_seen_subcommand_from add" -l pbkdf-parallel -d 'argon2id threads with a fixed cost' -r
complete -c keepsake -n "__fish_keepsake_using_subcommand recovery-key; and __fish_seen_subcommand_from add" -l layout -d 'Layout profile: names, mapping and mount point of the volume (see --help)' -r -f -a "tails\t'Tails Persistent Storage: partition and filesystem `TailsData`, unlocked as `TailsData_unlocked` and mounted at /live/persistence/TailsData_unlocked'
live-boot\t'Debian live-boot persistence: filesystem label `persistence`, mounted under /run/live/persistence'"
complete -c keepsake -n "__fish_keepsake_using_subcommand recovery-key; and __fish_seen_subcommand_from add" -l json -d 'Print one JSON object on standard output instead of text; errors too'
complete -c keepsake -n "__fish_keepsake_using_subcommand recovery-key; and __fish_seen_subcommand_from add" -l allow-unencrypted-swap -d 'Run even though unencrypted swap is active (secrets could be paged to disk)'
complete -c keepsake -n "__fish_keepsake_using_subcommand recovery-key; and __fish_seen_subcommand_from add" -l allow-core-dump-handler -d 'Run even though a core-dump handler may write dumps to a disk'
complete -c keepsake -n "__fish_keepsake_using_subcommand recovery-key; and __fish_seen_subcommand_from add" -l allow-disk-backed-tmp -d 'Run even though /tmp or /run/keepsake is not in RAM (tmpfs)'
complete -c keepsake -n "__fish_keepsake_using_subcommand recovery-key; and __fish_seen_subcommand_from add" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c keepsake -n "__fish_keepsake_using_subcommand recovery-key; and __fish_seen_subcommand_from add" -s V -l version -d 'Print version'
complete -c keepsake -n "__fish_keepsake_using_subcommand recovery-key; and __fish_seen_subcommand_from remove" -l device -d 'The persistence partition, or the disk to look for it on [default: found by name]' -r -F
complete -c keepsake -n "__fish_keepsake_using_subcommand recovery-key; and __fish_seen_subcommand_from remove" -l image -d 'A container file holding the volume' -r -F
complete -c keepsake -n "__fish_keepsake_using_subcommand recovery-key; and __fish_seen_subcommand_from remove" -l passphrase-fd -d 'Read the passphrase from file descriptor N: one line, the newline is dropped' -r
complete -c keepsake -n "__fish_keepsake_using_subcommand recovery-key; and __fish_seen_subcommand_from remove" -l key-file -d 'Read the key from FILE, whole and byte for byte (as `cryptsetup --key-file`)' -r -F
complete -c keepsake -n "__fish_keepsake_using_subcommand recovery-key; and __fish_seen_subcommand_from remove" -l layout -d 'Layout profile: names, mapping and mount point of the volume (see --help)' -r -f -a "tails\t'Tails Persistent Storage: partition and filesystem `TailsData`, unlocked as `TailsData_unlocked` and mounted at /live/persistence/TailsData_unlocked'
live-boot\t'Debian live-boot persistence: filesystem label `persistence`, mounted under /run/live/persistence'"
complete -c keepsake -n "__fish_keepsake_using_subcommand recovery-key; and __fish_seen_subcommand_from remove" -l json -d 'Print one JSON object on standard output instead of text; errors too'
complete -c keepsake -n "__fish_keepsake_using_subcommand recovery-key; and __fish_seen_subcommand_from remove" -l allow-unencrypted-swap -d 'Run even though unencrypted swap is active (secrets could be paged to disk)'
complete -c keepsake -n "__fish_keepsake_using_subcommand recovery-key; and __fish_seen_subcommand_from remove" -l allow-core-dump-handler -d 'Run even though a core-dump handler may write dumps to a disk'
complete -c keepsake -n "__fish_keepsake_using_subcommand recovery-key; and __fish_seen_subcommand_from remove" -l allow-disk-backed-tmp -d 'Run even though /tmp or /run/keepsake is not in RAM (tmpfs)'
complete -c keepsake -n "__fish_keepsake_using_subcommand recovery-key; and __fish_seen_subcommand_from remove" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c keepsake -n "__fish_keepsake_using_subcommand recovery-key; and __fish_seen_subcommand_from remove" -s V -l version -d 'Print version'
complete -c keepsake -n "__fish_keepsake_using_subcommand upgrade" -l header-backup -d 'Also save a copy of the header to FILE (on other media) before changing anything; it must not exist. It restores the volume with `cryptsetup luksHeaderRestore` if power fails during the conversion. Delete it afterwards: it holds the old keyslot' -r -F
complete -c keepsake -n "__fish_keepsake_using_subcommand upgrade" -l device -d 'The persistence partition, or the disk to look for it on [default: found by name]' -r -F
complete -c keepsake -n "__fish_keepsake_using_subcommand upgrade" -l image -d 'A container file holding the volume' -r -F
complete -c keepsake -n "__fish_keepsake_using_subcommand upgrade" -l passphrase-fd -d 'Read the passphrase from file descriptor N: one line, the newline is dropped' -r
complete -c keepsake -n "__fish_keepsake_using_subcommand upgrade" -l key-file -d 'Read the key from FILE, whole and byte for byte (as `cryptsetup --key-file`)' -r -F
complete -c keepsake -n "__fish_keepsake_using_subcommand upgrade" -l pbkdf-memory -d 'Use exactly this argon2id memory, in KiB, instead of the calibrated cost' -r
complete -c keepsake -n "__fish_keepsake_using_subcommand upgrade" -l pbkdf-force-iterations -d 'Use exactly this many argon2id iterations, without benchmark' -r
complete -c keepsake -n "__fish_keepsake_using_subcommand upgrade" -l pbkdf-max-memory -d 'The most memory a calibrated argon2id keyslot may take, in KiB [default: half of the available RAM, at most 1 GiB]. Raise it for a stronger key on a big machine: every machine that unlocks the volume needs that much free RAM' -r
complete -c keepsake -n "__fish_keepsake_using_subcommand upgrade" -l pbkdf-parallel -d 'argon2id threads with a fixed cost' -r
complete -c keepsake -n "__fish_keepsake_using_subcommand upgrade" -l layout -d 'Layout profile: names, mapping and mount point of the volume (see --help)' -r -f -a "tails\t'Tails Persistent Storage: partition and filesystem `TailsData`, unlocked as `TailsData_unlocked` and mounted at /live/persistence/TailsData_unlocked'
live-boot\t'Debian live-boot persistence: filesystem label `persistence`, mounted under /run/live/persistence'"
complete -c keepsake -n "__fish_keepsake_using_subcommand upgrade" -l dry-run -d 'Only report what would change'
complete -c keepsake -n "__fish_keepsake_using_subcommand upgrade" -l json -d 'Print one JSON object on standard output instead of text; errors too'
complete -c keepsake -n "__fish_keepsake_using_subcommand upgrade" -l allow-unencrypted-swap -d 'Run even though unencrypted swap is active (secrets could be paged to disk)'
complete -c keepsake -n "__fish_keepsake_using_subcommand upgrade" -l allow-core-dump-handler -d 'Run even though a core-dump handler may write dumps to a disk'
complete -c keepsake -n "__fish_keepsake_using_subcommand upgrade" -l allow-disk-backed-tmp -d 'Run even though /tmp or /run/keepsake is not in RAM (tmpfs)'
complete -c keepsake -n "__fish_keepsake_using_subcommand upgrade" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c keepsake -n "__fish_keepsake_using_subcommand upgrade" -s V -l version -d 'Print version'
complete -c keepsake -n "__fish_keepsake_using_subcommand check" -l device -d 'The persistence partition, or the disk to look for it on [default: found by name]' -r -F
complete -c keepsake -n "__fish_keepsake_using_subcommand check" -l image -d 'A container file holding the volume' -r -F
complete -c keepsake -n "__fish_keepsake_using_subcommand check" -l passphrase-fd -d 'Read the passphrase from file descriptor N: one line, the newline is dropped' -r
complete -c keepsake -n "__fish_keepsake_using_subcommand check" -l key-file -d 'Read the key from FILE, whole and byte for byte (as `cryptsetup --key-file`)' -r -F
complete -c keepsake -n "__fish_keepsake_using_subcommand check" -l layout -d 'Layout profile: names, mapping and mount point of the volume (see --help)' -r -f -a "tails\t'Tails Persistent Storage: partition and filesystem `TailsData`, unlocked as `TailsData_unlocked` and mounted at /live/persistence/TailsData_unlocked'
live-boot\t'Debian live-boot persistence: filesystem label `persistence`, mounted under /run/live/persistence'"
complete -c keepsake -n "__fish_keepsake_using_subcommand check" -l json -d 'Print one JSON object on standard output instead of text; errors too'
complete -c keepsake -n "__fish_keepsake_using_subcommand check" -l allow-unencrypted-swap -d 'Run even though unencrypted swap is active (secrets could be paged to disk)'
complete -c keepsake -n "__fish_keepsake_using_subcommand check" -l allow-core-dump-handler -d 'Run even though a core-dump handler may write dumps to a disk'
complete -c keepsake -n "__fish_keepsake_using_subcommand check" -l allow-disk-backed-tmp -d 'Run even though /tmp or /run/keepsake is not in RAM (tmpfs)'
complete -c keepsake -n "__fish_keepsake_using_subcommand check" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c keepsake -n "__fish_keepsake_using_subcommand check" -s V -l version -d 'Print version'
complete -c keepsake -n "__fish_keepsake_using_subcommand repair" -l device -d 'The persistence partition, or the disk to look for it on [default: found by name]' -r -F
complete -c keepsake -n "__fish_keepsake_using_subcommand repair" -l image -d 'A container file holding the volume' -r -F
complete -c keepsake -n "__fish_keepsake_using_subcommand repair" -l passphrase-fd -d 'Read the passphrase from file descriptor N: one line, the newline is dropped' -r
complete -c keepsake -n "__fish_keepsake_using_subcommand repair" -l key-file -d 'Read the key from FILE, whole and byte for byte (as `cryptsetup --key-file`)' -r -F
complete -c keepsake -n "__fish_keepsake_using_subcommand repair" -l layout -d 'Layout profile: names, mapping and mount point of the volume (see --help)' -r -f -a "tails\t'Tails Persistent Storage: partition and filesystem `TailsData`, unlocked as `TailsData_unlocked` and mounted at /live/persistence/TailsData_unlocked'
live-boot\t'Debian live-boot persistence: filesystem label `persistence`, mounted under /run/live/persistence'"
complete -c keepsake -n "__fish_keepsake_using_subcommand repair" -l json -d 'Print one JSON object on standard output instead of text; errors too'
complete -c keepsake -n "__fish_keepsake_using_subcommand repair" -l allow-unencrypted-swap -d 'Run even though unencrypted swap is active (secrets could be paged to disk)'
complete -c keepsake -n "__fish_keepsake_using_subcommand repair" -l allow-core-dump-handler -d 'Run even though a core-dump handler may write dumps to a disk'
complete -c keepsake -n "__fish_keepsake_using_subcommand repair" -l allow-disk-backed-tmp -d 'Run even though /tmp or /run/keepsake is not in RAM (tmpfs)'
complete -c keepsake -n "__fish_keepsake_using_subcommand repair" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c keepsake -n "__fish_keepsake_using_subcommand repair" -s V -l version -d 'Print version'
complete -c keepsake -n "__fish_keepsake_using_subcommand delete" -l device -d 'The persistence partition, or the disk to look for it on [default: found by name]' -r -F
complete -c keepsake -n "__fish_keepsake_using_subcommand delete" -l image -d 'A container file holding the volume' -r -F
complete -c keepsake -n "__fish_keepsake_using_subcommand delete" -l layout -d 'Layout profile: names, mapping and mount point of the volume (see --help)' -r -f -a "tails\t'Tails Persistent Storage: partition and filesystem `TailsData`, unlocked as `TailsData_unlocked` and mounted at /live/persistence/TailsData_unlocked'
live-boot\t'Debian live-boot persistence: filesystem label `persistence`, mounted under /run/live/persistence'"
complete -c keepsake -n "__fish_keepsake_using_subcommand delete" -s y -l yes -d 'Do not ask for the typed confirmation'
complete -c keepsake -n "__fish_keepsake_using_subcommand delete" -l json -d 'Print one JSON object on standard output instead of text; errors too'
complete -c keepsake -n "__fish_keepsake_using_subcommand delete" -l allow-unencrypted-swap -d 'Run even though unencrypted swap is active (secrets could be paged to disk)'
complete -c keepsake -n "__fish_keepsake_using_subcommand delete" -l allow-core-dump-handler -d 'Run even though a core-dump handler may write dumps to a disk'
complete -c keepsake -n "__fish_keepsake_using_subcommand delete" -l allow-disk-backed-tmp -d 'Run even though /tmp or /run/keepsake is not in RAM (tmpfs)'
complete -c keepsake -n "__fish_keepsake_using_subcommand delete" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c keepsake -n "__fish_keepsake_using_subcommand delete" -s V -l version -d 'Print version'
complete -c keepsake -n "__fish_keepsake_using_subcommand backup; and not __fish_seen_subcommand_from verify list" -l feature -d 'Back up only this feature (repeat for more) [default: the whole volume]' -r
complete -c keepsake -n "__fish_keepsake_using_subcommand backup; and not __fish_seen_subcommand_from verify list" -l since -d 'Write an incremental archive after PREV, an earlier archive of this chain (full or incremental): only files new or changed since PREV (size, modification time, owner, group, a wider mode or another ACL) are stored, with a listing of every file. It takes PREV\'s passphrase and key derivation (the --archive-kdf options do not apply), and records PREV\'s file name: keep PREV and the archives before it beside the new one to restore it' -r -F
complete -c keepsake -n "__fish_keepsake_using_subcommand backup; and not __fish_seen_subcommand_from verify list" -l to-device -d 'Instead of an archive, bring the backup volume DEV up to date with the whole unlocked volume: a LUKS partition, a disk holding one (searched as unlock searches), or a container file. Asks for the backup volume\'s passphrase' -r -F
complete -c keepsake -n "__fish_keepsake_using_subcommand backup; and not __fish_seen_subcommand_from verify list" -l size -d 'With --create: make DEV a container file of this size (K, M, G or T suffix)' -r
complete -c keepsake -n "__fish_keepsake_using_subcommand backup; and not __fish_seen_subcommand_from verify list" -l pbkdf-memory -d 'Use exactly this argon2id memory, in KiB, instead of the calibrated cost' -r
complete -c keepsake -n "__fish_keepsake_using_subcommand backup; and not __fish_seen_subcommand_from verify list" -l pbkdf-force-iterations -d 'Use exactly this many argon2id iterations, without benchmark' -r
complete -c keepsake -n "__fish_keepsake_using_subcommand backup; and not __fish_seen_subcommand_from verify list" -l pbkdf-max-memory -d 'The most memory a calibrated argon2id keyslot may take, in KiB [default: half of the available RAM, at most 1 GiB]. Raise it for a stronger key on a big machine: every machine that unlocks the volume needs that much free RAM' -r
complete -c keepsake -n "__fish_keepsake_using_subcommand backup; and not __fish_seen_subcommand_from verify list" -l pbkdf-parallel -d 'argon2id threads with a fixed cost' -r
complete -c keepsake -n "__fish_keepsake_using_subcommand backup; and not __fish_seen_subcommand_from verify list" -l passphrase-fd -d 'Read the passphrase from file descriptor N: one line, the newline is dropped' -r
complete -c keepsake -n "__fish_keepsake_using_subcommand backup; and not __fish_seen_subcommand_from verify list" -l key-file -d 'Read the key from FILE, whole and byte for byte (as `cryptsetup --key-file`)' -r -F
complete -c keepsake -n "__fish_keepsake_using_subcommand backup; and not __fish_seen_subcommand_from verify list" -l archive-kdf-memory -d 'argon2id memory for the archive key, in KiB (at most 4 GiB; every machine that reads the archive needs that much available)' -r
complete -c keepsake -n "__fish_keepsake_using_subcommand backup; and not __fish_seen_subcommand_from verify list" -l archive-kdf-iterations -d 'argon2id passes for the archive key (memory times passes at most 16 GiB)' -r
complete -c keepsake -n "__fish_keepsake_using_subcommand backup; and not __fish_seen_subcommand_from verify list" -l threads -d 'Threads that encrypt or decrypt the archive, each 1 MiB of it at a time [default: one per CPU available]. The archive is the same whatever the number; the memory it takes is at most (2 x N + 2) MiB (1 MiB with one thread). With more than one, a restore writes the files on one more thread, with at most 4 MiB of small files waiting' -r
complete -c keepsake -n "__fish_keepsake_using_subcommand backup; and not __fish_seen_subcommand_from verify list" -l layout -d 'Layout profile: names, mapping and mount point of the volume (see --help)' -r -f -a "tails\t'Tails Persistent Storage: partition and filesystem `TailsData`, unlocked as `TailsData_unlocked` and mounted at /live/persistence/TailsData_unlocked'
live-boot\t'Debian live-boot persistence: filesystem label `persistence`, mounted under /run/live/persistence'"
complete -c keepsake -n "__fish_keepsake_using_subcommand backup; and not __fish_seen_subcommand_from verify list" -l create -d 'Create the backup volume first: a new partition on the disk DEV (another live stick), or with --size a new container file DEV. Asks for its new passphrase twice'
complete -c keepsake -n "__fish_keepsake_using_subcommand backup; and not __fish_seen_subcommand_from verify list" -s y -l yes -d 'With --create: do not ask before partitioning'
complete -c keepsake -n "__fish_keepsake_using_subcommand backup; and not __fish_seen_subcommand_from verify list" -l json -d 'Print one JSON object on standard output instead of text; errors too'
complete -c keepsake -n "__fish_keepsake_using_subcommand backup; and not __fish_seen_subcommand_from verify list" -l allow-unencrypted-swap -d 'Run even though unencrypted swap is active (secrets could be paged to disk)'
complete -c keepsake -n "__fish_keepsake_using_subcommand backup; and not __fish_seen_subcommand_from verify list" -l allow-core-dump-handler -d 'Run even though a core-dump handler may write dumps to a disk'
complete -c keepsake -n "__fish_keepsake_using_subcommand backup; and not __fish_seen_subcommand_from verify list" -l allow-disk-backed-tmp -d 'Run even though /tmp or /run/keepsake is not in RAM (tmpfs)'
complete -c keepsake -n "__fish_keepsake_using_subcommand backup; and not __fish_seen_subcommand_from verify list" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c keepsake -n "__fish_keepsake_using_subcommand backup; and not __fish_seen_subcommand_from verify list" -s V -l version -d 'Print version'
complete -c keepsake -n "__fish_keepsake_using_subcommand backup; and not __fish_seen_subcommand_from verify list" -a "verify" -d 'Authenticate a whole archive, and every earlier archive an incremental one is made after, writing nothing'
complete -c keepsake -n "__fish_keepsake_using_subcommand backup; and not __fish_seen_subcommand_from verify list" -a "list" -d 'List what an archive holds (paths, types, sizes, owners, modes, times, and where an incremental archive\'s content is stored), reading its listing only'
complete -c keepsake -n "__fish_keepsake_using_subcommand backup; and __fish_seen_subcommand_from verify" -l passphrase-fd -d 'Read the passphrase from file descriptor N: one line, the newline is dropped' -r
complete -c keepsake -n "__fish_keepsake_using_subcommand backup; and __fish_seen_subcommand_from verify" -l key-file -d 'Read the key from FILE, whole and byte for byte (as `cryptsetup --key-file`)' -r -F
complete -c keepsake -n "__fish_keepsake_using_subcommand backup; and __fish_seen_subcommand_from verify" -l threads -d 'Threads that encrypt or decrypt the archive, each 1 MiB of it at a time [default: one per CPU available]. The archive is the same whatever the number; the memory it takes is at most (2 x N + 2) MiB (1 MiB with one thread). With more than one, a restore writes the files on one more thread, with at most 4 MiB of small files waiting' -r
complete -c keepsake -n "__fish_keepsake_using_subcommand backup; and __fish_seen_subcommand_from verify" -l layout -d 'Layout profile: names, mapping and mount point of the volume (see --help)' -r -f -a "tails\t'Tails Persistent Storage: partition and filesystem `TailsData`, unlocked as `TailsData_unlocked` and mounted at /live/persistence/TailsData_unlocked'
live-boot\t'Debian live-boot persistence: filesystem label `persistence`, mounted under /run/live/persistence'"
complete -c keepsake -n "__fish_keepsake_using_subcommand backup; and __fish_seen_subcommand_from verify" -l json -d 'Print one JSON object on standard output instead of text; errors too'
complete -c keepsake -n "__fish_keepsake_using_subcommand backup; and __fish_seen_subcommand_from verify" -l allow-unencrypted-swap -d 'Run even though unencrypted swap is active (secrets could be paged to disk)'
complete -c keepsake -n "__fish_keepsake_using_subcommand backup; and __fish_seen_subcommand_from verify" -l allow-core-dump-handler -d 'Run even though a core-dump handler may write dumps to a disk'
complete -c keepsake -n "__fish_keepsake_using_subcommand backup; and __fish_seen_subcommand_from verify" -l allow-disk-backed-tmp -d 'Run even though /tmp or /run/keepsake is not in RAM (tmpfs)'
complete -c keepsake -n "__fish_keepsake_using_subcommand backup; and __fish_seen_subcommand_from verify" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c keepsake -n "__fish_keepsake_using_subcommand backup; and __fish_seen_subcommand_from verify" -s V -l version -d 'Print version'
complete -c keepsake -n "__fish_keepsake_using_subcommand backup; and __fish_seen_subcommand_from list" -l passphrase-fd -d 'Read the passphrase from file descriptor N: one line, the newline is dropped' -r
complete -c keepsake -n "__fish_keepsake_using_subcommand backup; and __fish_seen_subcommand_from list" -l key-file -d 'Read the key from FILE, whole and byte for byte (as `cryptsetup --key-file`)' -r -F
complete -c keepsake -n "__fish_keepsake_using_subcommand backup; and __fish_seen_subcommand_from list" -l threads -d 'Threads that encrypt or decrypt the archive, each 1 MiB of it at a time [default: one per CPU available]. The archive is the same whatever the number; the memory it takes is at most (2 x N + 2) MiB (1 MiB with one thread). With more than one, a restore writes the files on one more thread, with at most 4 MiB of small files waiting' -r
complete -c keepsake -n "__fish_keepsake_using_subcommand backup; and __fish_seen_subcommand_from list" -l layout -d 'Layout profile: names, mapping and mount point of the volume (see --help)' -r -f -a "tails\t'Tails Persistent Storage: partition and filesystem `TailsData`, unlocked as `TailsData_unlocked` and mounted at /live/persistence/TailsData_unlocked'
live-boot\t'Debian live-boot persistence: filesystem label `persistence`, mounted under /run/live/persistence'"
complete -c keepsake -n "__fish_keepsake_using_subcommand backup; and __fish_seen_subcommand_from list" -l json -d 'Print one JSON object on standard output instead of text; errors too'
complete -c keepsake -n "__fish_keepsake_using_subcommand backup; and __fish_seen_subcommand_from list" -l allow-unencrypted-swap -d 'Run even though unencrypted swap is active (secrets could be paged to disk)'
complete -c keepsake -n "__fish_keepsake_using_subcommand backup; and __fish_seen_subcommand_from list" -l allow-core-dump-handler -d 'Run even though a core-dump handler may write dumps to a disk'
complete -c keepsake -n "__fish_keepsake_using_subcommand backup; and __fish_seen_subcommand_from list" -l allow-disk-backed-tmp -d 'Run even though /tmp or /run/keepsake is not in RAM (tmpfs)'
complete -c keepsake -n "__fish_keepsake_using_subcommand backup; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c keepsake -n "__fish_keepsake_using_subcommand backup; and __fish_seen_subcommand_from list" -s V -l version -d 'Print version'
complete -c keepsake -n "__fish_keepsake_using_subcommand restore" -l feature -d 'Restore only this feature (repeat for more) [default: everything in the archive]' -r
complete -c keepsake -n "__fish_keepsake_using_subcommand restore" -l path -d 'Restore only this file or folder (with everything below it), a path below the volume\'s root as `backup list` shows it (repeat for more). It goes back to its place; the folder above it must exist, and what is there already is replaced only with --overwrite' -r
complete -c keepsake -n "__fish_keepsake_using_subcommand restore" -l passphrase-fd -d 'Read the passphrase from file descriptor N: one line, the newline is dropped' -r
complete -c keepsake -n "__fish_keepsake_using_subcommand restore" -l key-file -d 'Read the key from FILE, whole and byte for byte (as `cryptsetup --key-file`)' -r -F
complete -c keepsake -n "__fish_keepsake_using_subcommand restore" -l threads -d 'Threads that encrypt or decrypt the archive, each 1 MiB of it at a time [default: one per CPU available]. The archive is the same whatever the number; the memory it takes is at most (2 x N + 2) MiB (1 MiB with one thread). With more than one, a restore writes the files on one more thread, with at most 4 MiB of small files waiting' -r
complete -c keepsake -n "__fish_keepsake_using_subcommand restore" -l layout -d 'Layout profile: names, mapping and mount point of the volume (see --help)' -r -f -a "tails\t'Tails Persistent Storage: partition and filesystem `TailsData`, unlocked as `TailsData_unlocked` and mounted at /live/persistence/TailsData_unlocked'
live-boot\t'Debian live-boot persistence: filesystem label `persistence`, mounted under /run/live/persistence'"
complete -c keepsake -n "__fish_keepsake_using_subcommand restore" -l dry-run -d 'Authenticate the archive and list what would be restored; write nothing'
complete -c keepsake -n "__fish_keepsake_using_subcommand restore" -l overwrite -d 'Replace the contents of features that already hold data'
complete -c keepsake -n "__fish_keepsake_using_subcommand restore" -l json -d 'Print one JSON object on standard output instead of text; errors too'
complete -c keepsake -n "__fish_keepsake_using_subcommand restore" -l allow-unencrypted-swap -d 'Run even though unencrypted swap is active (secrets could be paged to disk)'
complete -c keepsake -n "__fish_keepsake_using_subcommand restore" -l allow-core-dump-handler -d 'Run even though a core-dump handler may write dumps to a disk'
complete -c keepsake -n "__fish_keepsake_using_subcommand restore" -l allow-disk-backed-tmp -d 'Run even though /tmp or /run/keepsake is not in RAM (tmpfs)'
complete -c keepsake -n "__fish_keepsake_using_subcommand restore" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c keepsake -n "__fish_keepsake_using_subcommand restore" -s V -l version -d 'Print version'
