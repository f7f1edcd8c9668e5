//! The host side of `wit/`, generated once per world version: the
//! capabilities implement the `Host` traits of `switchyard:module@0.1.0`,
//! the engine links them, dispatch calls the guest's exports through
//! [`Guest`], whichever version the module was built against.
//!
//! Version 0.2.0 changed only `describe` (it also returns schemas); it
//! imports the 0.1.0 interfaces, so both worlds share one set of imports
//! and the same `handle`.

use wasmtime::component::{InstancePre, types::ComponentItem};

/// `switchyard:module/module@0.1.0`: the interfaces and an untyped `describe`.
pub mod v1 {
    wasmtime::component::bindgen!({
        world: "switchyard:module/module@0.1.0",
        path: "../wit",
        imports: { default: async },
        exports: { default: async },
    });
}

/// `switchyard:module/module@0.2.0`: `describe` with schemas; its imports
/// are the 0.1.0 interfaces of [`v1`].
pub mod v2 {
    wasmtime::component::bindgen!({
        world: "switchyard:module/module@0.2.0",
        path: "../wit",
        imports: { default: async },
        exports: { default: async },
        with: {
            "switchyard:module/types@0.1.0": crate::sandbox::bindings::v1::switchyard::module0_1_0::types,
            "switchyard:module/repository@0.1.0": crate::sandbox::bindings::v1::switchyard::module0_1_0::repository,
            "switchyard:module/events@0.1.0": crate::sandbox::bindings::v1::switchyard::module0_1_0::events,
            "switchyard:module/config@0.1.0": crate::sandbox::bindings::v1::switchyard::module0_1_0::config,
            "switchyard:module/log@0.1.0": crate::sandbox::bindings::v1::switchyard::module0_1_0::log,
            "switchyard:module/clock@0.1.0": crate::sandbox::bindings::v1::switchyard::module0_1_0::clock,
        },
    });
}

/// The imports' generated modules: `switchyard::module::{repository, events, ...}`.
pub mod switchyard {
    pub use super::v1::switchyard::module0_1_0 as module;
}

/// Links the imports of both worlds (they are the same interfaces).
pub fn add_to_linker<T>(
    linker: &mut wasmtime::component::Linker<T>,
    state: fn(&mut T) -> &mut T,
) -> wasmtime::Result<()>
where
    T: Send
        + 'static
        + switchyard::module::repository::Host
        + switchyard::module::events::Host
        + switchyard::module::config::Host
        + switchyard::module::log::Host
        + switchyard::module::clock::Host
        + switchyard::module::types::Host,
{
    v1::Module::add_to_linker::<T, wasmtime::component::HasSelf<T>>(linker, state)
}

/// Which world a component was built against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorldVersion {
    /// 0.1.0: no schemas.
    V1,
    /// 0.2.0: `describe` declares schemas.
    V2,
}

/// A module linked and ready to instantiate, of either world version.
pub enum GuestPre<T: 'static> {
    V1(v1::ModulePre<T>),
    V2(v2::ModulePre<T>),
}

impl<T: 'static> Clone for GuestPre<T> {
    fn clone(&self) -> Self {
        match self {
            GuestPre::V1(p) => GuestPre::V1(p.clone()),
            GuestPre::V2(p) => GuestPre::V2(p.clone()),
        }
    }
}

impl<T: Send + 'static> GuestPre<T> {
    /// Takes the world version from the type of the component's `describe`
    /// export: 0.2.0's descriptor has a `messages` field.
    pub fn new(pre: InstancePre<T>) -> wasmtime::Result<Self> {
        let component = pre.component();
        let engine = component.engine();
        let describes_messages = component
            .component_type()
            .get_export(engine, "describe")
            .and_then(|item| match item.ty {
                ComponentItem::ComponentFunc(f) => f.results().next(),
                _ => None,
            })
            .is_some_and(|result| match result {
                wasmtime::component::types::Type::Record(r) => {
                    r.fields().any(|f| f.name == "messages")
                }
                _ => false,
            });
        Ok(if describes_messages {
            GuestPre::V2(v2::ModulePre::new(pre)?)
        } else {
            GuestPre::V1(v1::ModulePre::new(pre)?)
        })
    }

    pub fn version(&self) -> WorldVersion {
        match self {
            GuestPre::V1(_) => WorldVersion::V1,
            GuestPre::V2(_) => WorldVersion::V2,
        }
    }

    /// A fresh instance in `store`.
    pub async fn instantiate_async(
        &self,
        store: impl wasmtime::AsContextMut<Data = T>,
    ) -> wasmtime::Result<Guest> {
        Ok(match self {
            GuestPre::V1(p) => Guest::V1(p.instantiate_async(store).await?),
            GuestPre::V2(p) => Guest::V2(p.instantiate_async(store).await?),
        })
    }
}

/// An instance of a module.
pub enum Guest {
    V1(v1::Module),
    V2(v2::Module),
}

impl Guest {
    /// `handle`, the same in both versions.
    pub async fn call_handle<S: wasmtime::AsContextMut>(
        &self,
        store: S,
        message: &switchyard::module::types::Envelope,
    ) -> wasmtime::Result<Result<String, switchyard::module::types::HandleError>>
    where
        S::Data: Send,
    {
        match self {
            Guest::V1(g) => g.call_handle(store, message).await,
            Guest::V2(g) => g.call_handle(store, message).await,
        }
    }

    /// `describe`, in 0.2.0's form (a 0.1.0 module declares no messages).
    pub async fn call_describe<S: wasmtime::AsContextMut>(
        &self,
        store: S,
    ) -> wasmtime::Result<(v2::Descriptor, WorldVersion)>
    where
        S::Data: Send,
    {
        match self {
            Guest::V1(g) => {
                let d = g.call_describe(store).await?;
                Ok((
                    v2::Descriptor {
                        name: d.name,
                        version: d.version,
                        topics: d.topics,
                        subscribes: d.subscribes,
                        emits: d.emits,
                        messages: Vec::new(),
                    },
                    WorldVersion::V1,
                ))
            }
            Guest::V2(g) => Ok((g.call_describe(store).await?, WorldVersion::V2)),
        }
    }
}
