//! Embeds an rpath to the libtorch that torch-sys linked against, so `target/release/sparq`
//! runs without `LD_LIBRARY_PATH` on the machine that built it (on another machine the dynamic
//! loader still honours `LD_LIBRARY_PATH`, pointing at that machine's torch/lib), and compiles
//! the small C++ shim for the ATen ops tch does not generate (variable-length attention) and the
//! CUDA settings training needs (current stream, device, autocast type), against the headers of
//! that same libtorch.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    println!("cargo:rerun-if-changed=src/model/csrc/varlen_attention.cpp");
    println!("cargo:rerun-if-changed=src/model/csrc/cuda_training.cpp");
    let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        panic!("torch-sys did not say where libtorch is (DEP_TCH_LIBTORCH_LIB)");
    };
    // RUNPATH (new dtags) so LD_LIBRARY_PATH set by a user wins over the build machine's path.
    println!("cargo:rustc-link-arg=-Wl,--enable-new-dtags,-rpath,{dir}");
    // libtorch's layout: <root>/lib beside <root>/include.
    let root = PathBuf::from(&dir)
        .parent()
        .map(PathBuf::from)
        .expect("the libtorch lib folder has a parent");
    let include = root.join("include");
    // PyPI torch has used the C++11 ABI since 2.7; LIBTORCH_CXX11_ABI=0 for an older build.
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .file("src/model/csrc/varlen_attention.cpp")
        .file("src/model/csrc/cuda_training.cpp")
        .compile("sparq_aten");
}
