//! The state kinds of issue #19 on a real agent: tests/salt/kinds.sls (in
//! Salt's form) applied with `halite-agent apply --local --root` to a
//! throwaway root holding the files, account database, /proc/sys values
//! and zoneinfo they act on, with a stand-in `systemctl` first on PATH
//! (the shadow tools run for real, `--root` into the throwaway root).
//! Test mode changes nothing; the first run changes every state that has
//! something to do; the second run changes nothing. Nothing on this
//! machine outside the temporary directory is touched.

use std::path::{Path, PathBuf};

use halite_e2e::CommandOutput;

/// kinds.sls and the files it names, copied alone into `into`:
/// tests/salt also holds the Salt corpus, whose trees are not part of it.
fn salt_tree(into: &Path) -> PathBuf {
    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let path = entry.unwrap().path();
            let target = to.join(path.file_name().unwrap());
            if path.is_dir() {
                copy_dir(&path, &target);
            } else {
                std::fs::copy(&path, &target).unwrap();
            }
        }
    }
    let salt = Path::new(env!("CARGO_MANIFEST_DIR")).join("salt");
    let tree = into.join("salt-tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::copy(salt.join("kinds.sls"), tree.join("kinds.sls")).unwrap();
    copy_dir(&salt.join("files"), &tree.join("files"));
    tree
}

/// What the states find on a fresh host: some to change, some to leave.
fn prepare_root(root: &Path) {
    let files: &[(&str, &str)] = &[
        ("etc/ssh/sshd_config", "Port 22\n#PermitRootLogin prohibit-password\n"),
        ("etc/motd", "Welcome\n"),
        ("etc/hosts", "127.0.0.1\tlocalhost\n10.0.0.9\told-db db9\n"),
        ("etc/security/limits.conf", "# limits\n# End of defaults\n"),
        ("usr/share/app/app.conf.example", "port = 80\n"),
        ("etc/ssl/site.pem", "CERT\n"),
        ("srv/www/stale.html", "old\n"),
        ("proc/sys/vm/swappiness", "60\n"),
        ("proc/mounts", "/dev/vda1 / ext4 rw 0 0\n"),
        ("etc/fstab", "/dev/vda1 / ext4 defaults 0 1\n"),
        ("usr/share/zoneinfo/Europe/Berlin", "TZif2\n"),
        ("usr/share/zoneinfo/Etc/UTC", "TZif2\n"),
        ("etc/timezone", "Etc/UTC\n"),
        ("etc/passwd", "root:x:0:0:root:/root:/bin/bash\nolduser:x:1700:100::/nonexistent:/usr/sbin/nologin\n"),
        ("etc/group", "root:x:0:\nusers:x:100:\ncrontab:x:107:\noldgroup:x:3000:\n"),
        ("etc/shadow", "root:*:19000:0:99999:7:::\nolduser:*:19000:0:99999:7:::\n"),
        ("etc/gshadow", "root:*::\nusers:*::\ncrontab:*::\noldgroup:*::\n"),
        (
            "var/spool/cron/crontabs/root",
            "# Lines below here are managed by Salt, do not edit\n# SALT_CRON_IDENTIFIER:/usr/local/bin/old-backup\n0 3 * * * /usr/local/bin/old-backup\n",
        ),
    ];
    for (path, content) in files {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    std::fs::create_dir_all(root.join("home")).unwrap();
    std::os::unix::fs::symlink("/usr/share/zoneinfo/Etc/UTC", root.join("etc/localtime")).unwrap();
}

/// Stand-ins for the programs the kinds run on a real host, first on
/// PATH: `systemctl` keeps units in `<dir>/state/{active,enabled}/<unit>`;
/// `dpkg-query`, `apt-cache` and `apt-get` keep packages in
/// `<dir>/state/{pkgs,conf,candidates}/<name>` (content: the version);
/// `mount` adds its mount to the root's `/proc/mounts`.
fn stand_ins(dir: &Path, root: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("bin");
    for sub in ["bin", "state/active", "state/enabled", "state/pkgs", "state/conf", "state/candidates"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let scripts = [
        (
            "systemctl",
            r#"verb=$1; unit=$2
case $verb in
  is-active) test -e "$S/active/$unit" ;;
  is-enabled) test -e "$S/enabled/$unit" ;;
  start|restart|reload) touch "$S/active/$unit" ;;
  stop) rm -f "$S/active/$unit" ;;
  enable) touch "$S/enabled/$unit" ;;
  disable) rm -f "$S/enabled/$unit" ;;
  *) exit 2 ;;
esac"#,
        ),
        (
            "dpkg-query",
            r#"name=$4
if [ -e "$S/pkgs/$name" ]; then printf 'install ok installed %s' "$(cat "$S/pkgs/$name")"
elif [ -e "$S/conf/$name" ]; then printf 'deinstall ok config-files %s' "$(cat "$S/conf/$name")"
else exit 1; fi"#,
        ),
        (
            "apt-cache",
            r#"printf '%s:\n  Candidate: %s\n' "$2" "$(cat "$S/candidates/$2" 2>/dev/null || echo '(none)')""#,
        ),
        (
            "apt-get",
            r#"verb=install
for p in "$@"; do case $p in
  -*) ;;
  install|remove|purge|update) verb=$p ;;
  *) n=${p%%=*}; case $verb in
    install) printf %s "${p#*=}" > "$S/pkgs/$n" ;;
    remove) mv "$S/pkgs/$n" "$S/conf/$n" ;;
    purge) rm -f "$S/pkgs/$n" "$S/conf/$n" ;;
  esac ;;
esac; done"#,
        ),
    ];
    let mount =
        format!("for a; do last=$a; done\necho \"$6 $last $2 $4 0 0\" >> {}", root.join("proc/mounts").display());
    let scripts: Vec<(&str, &str)> = scripts.into_iter().chain([("mount", mount.as_str())]).collect();
    let state = dir.join("state").display().to_string();
    for (name, body) in scripts {
        let path = bin.join(name);
        std::fs::write(&path, format!("#!/bin/sh\nS={state}\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    for (file, content) in [
        ("enabled/cups", ""),
        ("pkgs/openssl", "3.0.1"),
        ("candidates/openssl", "3.0.2"),
        ("pkgs/telnet", "0.17"),
        ("pkgs/telnetd", "0.17"),
        ("conf/rsh-server", "0.17"),
    ] {
        std::fs::write(dir.join("state").join(file), content).unwrap();
    }
    bin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_new_kind_applies_once_then_changes_nothing() {
    if !nix::unistd::geteuid().is_root() {
        // useradd/groupadd --root chroot(2) into the root: root only.
        panic!(
            "this test applies user.present with useradd --root, which needs root (run the e2e tests as root, as CI does)"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    prepare_root(&root);
    let bin = stand_ins(dir.path(), &root);
    // The repository git.latest clones (`./app.git`, from the agent's
    // working directory).
    let repo = dir.path().join("app.git");
    std::fs::create_dir(&repo).unwrap();
    std::fs::write(repo.join("README"), "app\n").unwrap();
    for args in [
        &["init", "--quiet", "--initial-branch=main"][..],
        &["add", "README"],
        &["-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "--quiet", "-m", "first"],
    ] {
        let status = halite_e2e::blocking_process("git").arg("-C").arg(&repo).args(args).status().unwrap();
        assert!(status.success(), "git {args:?}");
    }
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let binaries = halite_e2e::binaries();
    let tree = salt_tree(dir.path());
    let run = |extra: &[&str]| {
        let mut command = halite_e2e::process(&binaries.agent);
        command
            .current_dir(dir.path())
            .env("PATH", &path)
            .args(["apply", "--local"])
            .arg(&tree)
            .arg("kinds")
            .args(["--id", "web01", "--root"])
            .arg(&root)
            .args(["--config", "/nonexistent/agent.yaml", "--json"])
            .args(extra);
        CommandOutput::of(command)
    };
    let states = 32;

    let test = run(&["--test"]).await.unwrap();
    let json = test.json().unwrap();
    assert_eq!(json["summary"]["failed_states"], 0, "{test:?}");
    assert_eq!(json["summary"]["would_change"], states - 2, "all but file.exists and file.missing: {json}");
    assert_eq!(std::fs::read_to_string(root.join("etc/motd")).unwrap(), "Welcome\n", "--test changed a file");
    assert!(!root.join("srv/www/index.html").exists(), "--test changed a file");
    assert!(std::fs::read_to_string(root.join("etc/passwd")).unwrap().contains("olduser"), "--test removed a user");

    let first = run(&[]).await.unwrap();
    let json = first.json().unwrap();
    assert_eq!(first.code, 0, "{first:?}");
    assert_eq!(json["summary"]["changed"], states - 2, "{json}");
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
    assert_eq!(read("etc/ssh/sshd_config"), "Port 22\nPermitRootLogin no\n");
    assert_eq!(read("etc/motd"), "# managed by halite\nWelcome\n");
    assert_eq!(
        read("etc/hosts"),
        "127.0.0.1\tlocalhost\n10.0.0.9\tdb9\n# BEGIN internal\n10.0.0.7 cache\n# END internal\n10.0.0.5\tdb.internal\n"
    );
    assert_eq!(read("etc/security/limits.conf"), "# limits\n# End of defaults\n*  soft  nofile  65536\n");
    assert_eq!(read("etc/app/app.conf"), "port = 80\n");
    assert_eq!(read("etc/app/extra.conf"), "workers = 4\n");
    assert_eq!(read("srv/www/css/site.css"), "body { margin: 0 }\n");
    assert!(!root.join("srv/www/stale.html").exists() && !root.join("srv/www/index.html.bak").exists());
    assert_eq!(read("proc/sys/vm/swappiness"), "10\n");
    assert_eq!(read("etc/sysctl.d/99-salt.conf"), "#\n# Kernel sysctl configuration\n#\nvm.swappiness = 10\n");
    assert!(
        read("var/spool/cron/crontabs/root").ends_with(
            "# SALT_CRON_IDENTIFIER:/usr/local/bin/backup --quiet\n30 2 * * * /usr/local/bin/backup --quiet\n"
        )
    );
    assert!(!read("var/spool/cron/crontabs/root").contains("old-backup"));
    assert_eq!(std::fs::read_link(root.join("etc/localtime")).unwrap(), Path::new("/usr/share/zoneinfo/Europe/Berlin"));
    assert!(read("etc/passwd").contains("deploy:x:1500:") && !read("etc/passwd").contains("olduser"));
    assert!(read("etc/group").contains("devs:x:2000:deploy") && !read("etc/group").contains("oldgroup"));
    assert!(dir.path().join("state/enabled/chrony").exists() && !dir.path().join("state/enabled/cups").exists());
    assert!(dir.path().join("state/active/nginx").exists());
    assert!(dir.path().join("setup.done").exists(), "cmd.script ran in the agent's working directory");
    assert_eq!(read("srv/app/README"), "app\n", "git.latest cloned under the root");
    assert_eq!(read("opt/tool/tool-2.1/README"), "tool 2.1\n", "archive.extracted under the root");
    assert_eq!(
        read("etc/apt/sources.list.d/example.list"),
        "deb [signed-by=/etc/apt/keyrings/example.asc] https://apt.example.com/debian bookworm main\n"
    );
    assert!(read("etc/apt/keyrings/example.asc").contains("PGP PUBLIC KEY"));
    assert_eq!(read("etc/fstab"), "/dev/vda1 / ext4 defaults 0 1\n/dev/vdb1\t/srv/data\text4\tnoatime\t0\t0\n");
    assert!(read("proc/mounts").contains("/dev/vdb1 "), "mounted");
    let package = |p: &str| std::fs::read_to_string(dir.path().join("state").join(p)).ok();
    assert_eq!(package("pkgs/openssl").as_deref(), Some("3.0.2"));
    assert_eq!((package("pkgs/telnet"), package("conf/telnet").as_deref()), (None, Some("0.17")));
    assert_eq!((package("pkgs/telnetd"), package("conf/rsh-server")), (None, None));

    let again = run(&[]).await.unwrap();
    let json = again.json().unwrap();
    assert_eq!(again.code, 0, "{again:?}");
    assert_eq!(json["summary"]["unchanged"], states, "a second run changed something: {json}");
}
