//! The host side of `wit/switchyard.wit`, generated once: the capabilities
//! implement its `Host` traits, the engine links them, dispatch calls the
//! guest's exports through [`Guest`].

wasmtime::component::bindgen!({
    world: "module",
    path: "../wit",
    imports: { default: async },
    exports: { default: async },
});

// The world is named `module`; these names keep it apart from `wasmtime::Module`.
pub use self::Module as Guest;
pub use self::ModulePre as GuestPre;
