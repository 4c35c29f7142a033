//! The test and benchmark XDP programs, an object of their own (as aya keeps its
//! integration-test programs apart): the live-frames generator, the sinks, the bare
//! redirect baseline and the sync link's fault injector. The lab's testbed loads them; the
//! object an orchestrator or member loads does not contain them.
#![no_std]
#![no_main]

mod bench;
mod fault;
// The production programs' bounds-checked packet access, the one copy of it; the rest of
// that file (header layouts, parsers, the constants it re-exports) is not needed here.
#[allow(dead_code, unused_imports)]
#[path = "../../programs/src/parse.rs"]
mod parse;
#[path = "../../programs/src/runtime.rs"]
mod runtime;
