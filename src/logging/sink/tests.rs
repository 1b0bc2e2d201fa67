use super::*;

fn lines_of(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Every thread's lines reach the file whole and in that thread's order, including the lines
/// of threads that have exited; the counters agree with the file.
#[test]
fn lines_from_many_threads_are_all_written_whole_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let sink = Arc::new(Sink::start(AccessTarget::File(path.clone())).unwrap());
    const THREADS: usize = 4;
    const PER_THREAD: usize = 5_000;
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let sink = sink.clone();
            std::thread::spawn(move || {
                for n in 0..PER_THREAD {
                    // Long enough that each thread fills a batch several times.
                    sink.append_with(|out| {
                        out.extend_from_slice(
                            format!("t{t} {n:06} {}\n", "x".repeat(40)).as_bytes(),
                        )
                    });
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    assert!(sink.flush(Duration::from_secs(10)));
    let lines = lines_of(&path);
    assert_eq!(lines.len(), THREADS * PER_THREAD);
    for t in 0..THREADS {
        let own: Vec<usize> = lines
            .iter()
            .filter_map(|l| l.strip_prefix(&format!("t{t} ")))
            .map(|rest| {
                assert_eq!(rest.len(), 6 + 1 + 40, "torn line: {rest:?}");
                rest[..6].parse().unwrap()
            })
            .collect();
        assert_eq!(own, (0..PER_THREAD).collect::<Vec<_>>(), "thread {t}");
    }
    assert_eq!(sink.written(), (THREADS * PER_THREAD) as u64);
    assert_eq!(sink.dropped(), 0);
}

/// A reopen (logrotate moved the file) splits the lines between the moved file and the new
/// one: nothing lost, nothing twice.
#[test]
fn reopen_puts_earlier_lines_in_the_moved_file_and_later_ones_in_the_new() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let moved = dir.path().join("access.log.1");
    let sink = Sink::start(AccessTarget::File(path.clone())).unwrap();
    for n in 0..100 {
        sink.append_with(|out| out.extend_from_slice(format!("before {n}\n").as_bytes()));
    }
    std::fs::rename(&path, &moved).unwrap();
    sink.reopen();
    for n in 0..50 {
        sink.append_with(|out| out.extend_from_slice(format!("after {n}\n").as_bytes()));
    }
    assert!(sink.flush(Duration::from_secs(10)));
    let old = lines_of(&moved);
    let new = lines_of(&path);
    assert_eq!(old.len() + new.len(), 150);
    assert_eq!(
        old.iter().filter(|l| l.starts_with("before ")).count(),
        100,
        "every line appended before the reopen is in the moved file"
    );
    assert!(new.iter().all(|l| l.starts_with("after ")), "{new:?}");
}

/// Two sinks (as tests start) keep their lines apart even on one thread.
#[test]
fn a_thread_writing_to_two_sinks_keeps_their_lines_apart() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.log"), dir.path().join("b.log"));
    let sink_a = Sink::start(AccessTarget::File(a.clone())).unwrap();
    let sink_b = Sink::start(AccessTarget::File(b.clone())).unwrap();
    for n in 0..10 {
        sink_a.append_with(|out| out.extend_from_slice(format!("a {n}\n").as_bytes()));
        sink_b.append_with(|out| out.extend_from_slice(format!("b {n}\n").as_bytes()));
    }
    assert!(sink_a.flush(Duration::from_secs(10)));
    assert!(sink_b.flush(Duration::from_secs(10)));
    let expect = |p: &str| (0..10).map(|n| format!("{p} {n}")).collect::<Vec<_>>();
    assert_eq!(lines_of(&a), expect("a"));
    assert_eq!(lines_of(&b), expect("b"));
}
