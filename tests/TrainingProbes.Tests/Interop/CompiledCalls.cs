using System.Collections.Immutable;
using System.Reflection;
using System.Reflection.Emit;
using System.Reflection.Metadata;
using System.Reflection.Metadata.Ecma335;
using System.Reflection.PortableExecutable;

namespace TrainingProbes.Tests.Interop;

/// <summary>One call instruction: the calling method, the callee, and the opcode that follows the call (what is done with its result).</summary>
/// <param name="Caller">Declaring type and name with parameter types, as in <c>TrainingProbes.Capture.GradientSketch::Add(...)</c>.</param>
/// <param name="Callee">The same for the method called (a nested type is written <c>TorchSharp.torch/Tensor</c>).</param>
/// <param name="Next">The opcode after the call, or null at the end of the body.</param>
internal sealed record CallSite(string Caller, string Callee, OpCode? Next);

/// <summary>
/// The call instructions (<c>call</c>, <c>callvirt</c>, <c>newobj</c>, and <c>ldftn</c>/<c>ldvirtftn</c>, which make a
/// delegate that calls the method) of every method body of a compiled assembly,
/// read from its metadata and IL with System.Reflection.Metadata, without loading it. A method is named by its declaring
/// type, name and parameter types, so that a call in one assembly matches the definition in another. A virtual or
/// interface call is named by the method it names, not by the overrides it may reach.
/// </summary>
internal static class CompiledCalls
{
    private static readonly Dictionary<short, OpCode> OpCodesByValue = typeof(OpCodes)
        .GetFields(BindingFlags.Public | BindingFlags.Static)
        .Select(f => (OpCode)f.GetValue(null)!)
        .ToDictionary(o => o.Value);

    public static List<CallSite> Read(string assemblyPath)
    {
        var sites = new List<CallSite>();
        using var pe = new PEReader(File.OpenRead(assemblyPath));
        var md = pe.GetMetadataReader();
        foreach (var typeHandle in md.TypeDefinitions)
        {
            foreach (var methodHandle in md.GetTypeDefinition(typeHandle).GetMethods())
            {
                var method = md.GetMethodDefinition(methodHandle);
                if (method.RelativeVirtualAddress == 0) continue;   // abstract, extern
                string caller = Names.Of(md, methodHandle);
                var il = pe.GetMethodBody(method.RelativeVirtualAddress).GetILReader();
                int pending = -1;   // index in sites of a call whose next opcode is not known yet
                while (il.RemainingBytes > 0)
                {
                    short value = il.ReadByte();
                    if (value == 0xFE) value = (short)(0xFE00 | il.ReadByte());
                    var op = OpCodesByValue[value];
                    if (pending >= 0)
                    {
                        sites[pending] = sites[pending] with { Next = op };
                        pending = -1;
                    }

                    switch (op.OperandType)
                    {
                        case OperandType.InlineNone:
                            break;
                        case OperandType.ShortInlineBrTarget or OperandType.ShortInlineI or OperandType.ShortInlineVar:
                            il.ReadByte();
                            break;
                        case OperandType.InlineVar:
                            il.ReadInt16();
                            break;
                        case OperandType.InlineI8 or OperandType.InlineR:
                            il.ReadInt64();
                            break;
                        case OperandType.InlineSwitch:
                            int count = il.ReadInt32();
                            for (int i = 0; i < count; i++) il.ReadInt32();
                            break;
                        case OperandType.InlineMethod:
                            var token = MetadataTokens.EntityHandle(il.ReadInt32());
                            // ldftn and ldvirtftn make a delegate that will call the method: an edge like a call.
                            if (op == OpCodes.Call || op == OpCodes.Callvirt || op == OpCodes.Newobj || op == OpCodes.Ldftn || op == OpCodes.Ldvirtftn)
                            {
                                sites.Add(new CallSite(caller, Names.Of(md, token), null));
                                pending = sites.Count - 1;
                            }

                            break;
                        default:
                            il.ReadInt32();
                            break;
                    }
                }
            }
        }

        return sites;
    }

    /// <summary>Names of methods and types, from one assembly's metadata.</summary>
    private sealed class Names : ISignatureTypeProvider<string, object?>
    {
        private static readonly Names Instance = new();

        public static string Of(MetadataReader md, EntityHandle method) => method.Kind switch
        {
            HandleKind.MethodDefinition => Of(md, (MethodDefinitionHandle)method),
            HandleKind.MemberReference => Of(md, (MemberReferenceHandle)method),
            HandleKind.MethodSpecification => Of(md, md.GetMethodSpecification((MethodSpecificationHandle)method).Method),
            _ => method.Kind.ToString(),
        };

        public static string Of(MetadataReader md, MethodDefinitionHandle handle)
        {
            var method = md.GetMethodDefinition(handle);
            var signature = method.DecodeSignature(Instance, null);
            return $"{Type(md, method.GetDeclaringType())}::{md.GetString(method.Name)}({string.Join(",", signature.ParameterTypes)})";
        }

        private static string Of(MetadataReader md, MemberReferenceHandle handle)
        {
            var member = md.GetMemberReference(handle);
            var signature = member.DecodeMethodSignature(Instance, null);
            string parent = member.Parent.Kind == HandleKind.MethodDefinition
                ? Of(md, (MethodDefinitionHandle)member.Parent)
                : Type(md, member.Parent);
            return $"{parent}::{md.GetString(member.Name)}({string.Join(",", signature.ParameterTypes)})";
        }

        private static string Type(MetadataReader md, EntityHandle handle)
        {
            switch (handle.Kind)
            {
                case HandleKind.TypeDefinition:
                {
                    var type = md.GetTypeDefinition((TypeDefinitionHandle)handle);
                    var declaring = type.GetDeclaringType();
                    return declaring.IsNil ? Qualified(md.GetString(type.Namespace), md.GetString(type.Name)) : Type(md, declaring) + "/" + md.GetString(type.Name);
                }

                case HandleKind.TypeReference:
                {
                    var type = md.GetTypeReference((TypeReferenceHandle)handle);
                    return type.ResolutionScope.Kind == HandleKind.TypeReference
                        ? Type(md, type.ResolutionScope) + "/" + md.GetString(type.Name)
                        : Qualified(md.GetString(type.Namespace), md.GetString(type.Name));
                }

                case HandleKind.TypeSpecification:
                {
                    // A generic instantiation: its definition's name (calls on List<T> and List<int> are one method here).
                    string name = md.GetTypeSpecification((TypeSpecificationHandle)handle).DecodeSignature(Instance, null);
                    int generic = name.IndexOf('<', StringComparison.Ordinal);
                    return generic < 0 ? name : name[..generic];
                }

                default:
                    return handle.Kind.ToString();
            }
        }

        private static string Qualified(string ns, string name) => ns.Length == 0 ? name : ns + "." + name;

        public string GetArrayType(string elementType, ArrayShape shape) => elementType + "[" + new string(',', shape.Rank - 1) + "]";
        public string GetByReferenceType(string elementType) => elementType + "&";
        public string GetFunctionPointerType(MethodSignature<string> signature) => "method*";
        public string GetGenericInstantiation(string genericType, ImmutableArray<string> typeArguments) => genericType + "<" + string.Join(",", typeArguments) + ">";
        public string GetGenericMethodParameter(object? genericContext, int index) => "!!" + index;
        public string GetGenericTypeParameter(object? genericContext, int index) => "!" + index;
        public string GetModifiedType(string modifier, string unmodifiedType, bool isRequired) => unmodifiedType;
        public string GetPinnedType(string elementType) => elementType;
        public string GetPointerType(string elementType) => elementType + "*";
        public string GetPrimitiveType(PrimitiveTypeCode typeCode) => typeCode.ToString();
        public string GetSZArrayType(string elementType) => elementType + "[]";
        public string GetTypeFromDefinition(MetadataReader reader, TypeDefinitionHandle handle, byte rawTypeKind) => Type(reader, handle);
        public string GetTypeFromReference(MetadataReader reader, TypeReferenceHandle handle, byte rawTypeKind) => Type(reader, handle);
        public string GetTypeFromSpecification(MetadataReader reader, object? genericContext, TypeSpecificationHandle handle, byte rawTypeKind) => Type(reader, handle);
    }
}
