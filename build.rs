//! Embeds an rpath to the libtorch that torch-sys linked against, so `target/release/sparq`
//! runs without `LD_LIBRARY_PATH` on the machine that built it. On another machine the
//! dynamic loader still honours `LD_LIBRARY_PATH` (pointing at that machine's torch/lib).
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        // RUNPATH (new dtags) so LD_LIBRARY_PATH set by a user wins over the build machine's path.
        println!("cargo:rustc-link-arg=-Wl,--enable-new-dtags,-rpath,{dir}");
    }
}
